package luavm

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Report is a JSON-friendly view of an invocation's outcome, used by
// `moongate fn test --json` and the golden tests. Cost is omitted when nil.
type Report struct {
	Outcome string          `json:"outcome"`
	Error   string          `json:"error,omitempty"`
	Kind    string          `json:"result_kind"`
	Result  json.RawMessage `json:"result,omitempty"`
	Effects []ReportEffect  `json:"effects"`
	State   []ReportStateOp `json:"state"`
	Logs    []ReportLog     `json:"logs"`
	Cost    *ReportCost     `json:"cost,omitempty"`
}

// ReportCost is an invocation's Cost in a Report, with the key names of
// the management API's cost (docs/api.md): wall is a duration in seconds
// with an "s" suffix, as protobuf's JSON writes it ("0.000078927s").
type ReportCost struct {
	Wall       string `json:"wall"`
	Steps      int64  `json:"steps"`
	PeakMemory int64  `json:"peak_memory_bytes"`
	BytesIn    int64  `json:"bytes_in"`
	BytesOut   int64  `json:"bytes_out"`
	Effects    int    `json:"effects"`
	Outcome    string `json:"outcome"`
}

// ReportEffect is one effect in a Report.
type ReportEffect struct {
	Kind    string          `json:"kind"`
	Topic   string          `json:"topic,omitempty"`
	Payload string          `json:"payload,omitempty"`
	QoS     byte            `json:"qos,omitempty"`
	Retain  bool            `json:"retain,omitempty"`
	Stream  string          `json:"stream,omitempty"`
	Record  json.RawMessage `json:"record,omitempty"`
	Bucket  string          `json:"bucket,omitempty"`
	Name    string          `json:"name,omitempty"`
	Type    string          `json:"content_type,omitempty"`
}

// ReportStateOp is one state operation in a Report.
type ReportStateOp struct {
	Op    string          `json:"op"`
	Key   string          `json:"key"`
	Value json.RawMessage `json:"value,omitempty"`
	Delta float64         `json:"delta,omitempty"`
}

// ReportLog is one log line in a Report (without its time).
type ReportLog struct {
	Level  string          `json:"level"`
	Msg    string          `json:"msg"`
	Fields json.RawMessage `json:"fields,omitempty"`
}

// NewReport builds the Report of an Invoke result and error.
func NewReport(res *Result, err error, withCost bool) Report {
	r := Report{Outcome: res.Cost.Outcome, Effects: []ReportEffect{}, State: []ReportStateOp{}, Logs: []ReportLog{}}
	if err != nil {
		r.Error = err.Error()
	}
	switch res.Kind {
	case ResultNone:
		r.Kind = "none"
	case ResultJSON:
		r.Kind = "json"
		r.Result = json.RawMessage(res.Value)
	case ResultString:
		r.Kind = "string"
		b, _ := json.Marshal(string(res.Value))
		r.Result = b
	}
	for _, e := range res.Effects {
		switch e.Kind {
		case EffectPublish:
			r.Effects = append(r.Effects, ReportEffect{Kind: "publish", Topic: e.Topic, Payload: string(e.Payload), QoS: e.QoS, Retain: e.Retain})
		case EffectEmit:
			r.Effects = append(r.Effects, ReportEffect{Kind: "emit", Stream: e.Stream, Record: json.RawMessage(e.Record)})
		case EffectBlobWrite:
			r.Effects = append(r.Effects, ReportEffect{Kind: "blob.write", Bucket: e.Bucket, Name: e.Name, Type: e.ContentType, Payload: string(e.Payload)})
		case EffectBlobDelete:
			r.Effects = append(r.Effects, ReportEffect{Kind: "blob.delete", Bucket: e.Bucket, Name: e.Name})
		}
	}
	for _, op := range res.State {
		o := ReportStateOp{Key: op.Key, Value: json.RawMessage(op.Value), Delta: op.Delta}
		switch op.Op {
		case StateSet:
			o.Op = "set"
		case StateDelete:
			o.Op = "delete"
		case StateIncr:
			o.Op = "incr"
		}
		r.State = append(r.State, o)
	}
	for _, l := range res.Logs {
		r.Logs = append(r.Logs, ReportLog{Level: strings.ToLower(l.Level.String()), Msg: l.Msg, Fields: json.RawMessage(l.Fields)})
	}
	if withCost {
		c := res.Cost
		r.Cost = &ReportCost{Wall: protoDuration(c.Wall), Steps: c.Steps, PeakMemory: c.PeakMemory,
			BytesIn: c.BytesIn, BytesOut: c.BytesOut, Effects: c.Effects, Outcome: c.Outcome}
	}
	return r
}

// protoDuration writes d as protobuf's JSON writes a Duration: seconds
// with 0, 3, 6 or 9 decimals and an "s" ("1.500s", "0.000078927s").
func protoDuration(d time.Duration) string {
	neg := d < 0
	if neg {
		d = -d
	}
	sec, ns := int64(d/time.Second), int64(d%time.Second)
	out := strconv.FormatInt(sec, 10)
	if neg {
		out = "-" + out
	}
	if ns != 0 {
		frac := fmt.Sprintf("%09d", ns)
		for len(frac) > 3 && strings.HasSuffix(frac, "000") {
			frac = frac[:len(frac)-3]
		}
		out += "." + frac
	}
	return out + "s"
}
