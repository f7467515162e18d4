package luavm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// EventFile is the JSON form of an Event used by `moongate fn test` and
// the golden tests. Payload and Body may be a JSON string (taken as raw
// text) or any other JSON value (taken as its JSON text).
type EventFile struct {
	ID       string            `json:"id"`
	Topic    string            `json:"topic"`
	Payload  json.RawMessage   `json:"payload"`
	Captures map[string]string `json:"captures"`
	TS       int64             `json:"ts"`
	QoS      byte              `json:"qos"`
	Trigger  string            `json:"trigger"`
	HTTP     *struct {
		Method  string              `json:"method"`
		Path    string              `json:"path"`
		Query   map[string][]string `json:"query"`
		Headers map[string]string   `json:"headers"`
		Body    json.RawMessage     `json:"body"`
	} `json:"http"`
}

// ParseEvent decodes an EventFile. Unknown fields are errors.
func ParseEvent(data []byte) (*Event, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f EventFile
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("luavm: event file: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("luavm: event file: data after the event object")
	}
	ev := &Event{ID: f.ID, Topic: f.Topic, Payload: rawText(f.Payload), Captures: f.Captures, TS: f.TS, QoS: f.QoS, Trigger: f.Trigger}
	if ev.Trigger == "" {
		ev.Trigger = "invoke"
	}
	if f.HTTP != nil {
		ev.HTTP = &HTTPRequest{Method: f.HTTP.Method, Path: f.HTTP.Path, Query: f.HTTP.Query, Headers: f.HTTP.Headers, Body: rawText(f.HTTP.Body)}
		if ev.Trigger == "invoke" {
			ev.Trigger = "http"
		}
	}
	return ev, nil
}

// rawText returns the text of a JSON string, or the JSON text itself.
func rawText(m json.RawMessage) []byte {
	if len(m) == 0 || string(m) == "null" {
		return nil
	}
	var s string
	if m[0] == '"' && json.Unmarshal(m, &s) == nil {
		return []byte(s)
	}
	return []byte(m)
}
