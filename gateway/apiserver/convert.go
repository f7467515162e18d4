package apiserver

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/store"
)

// jsonValue decodes stored JSON; text that is not JSON becomes a string.
// Nothing and JSON null give nil (the field is left out).
func jsonValue(b []byte) *structpb.Value {
	if len(b) == 0 {
		return nil
	}
	v := &structpb.Value{}
	if err := protojson.Unmarshal(b, v); err != nil {
		if utf8.Valid(b) {
			return structpb.NewStringValue(string(b))
		}
		return nil
	}
	if _, null := v.Kind.(*structpb.Value_NullValue); null {
		return nil
	}
	return v
}

// jsonStruct decodes a stored JSON object, or nil.
func jsonStruct(b []byte) *structpb.Struct {
	if len(b) == 0 {
		return nil
	}
	s := &structpb.Struct{}
	if err := protojson.Unmarshal(b, s); err != nil {
		return nil
	}
	return s
}

// encodeValue encodes a Value as compact JSON (null when nil).
func encodeValue(v *structpb.Value) ([]byte, error) {
	if v == nil {
		return []byte("null"), nil
	}
	b, err := protojson.Marshal(v)
	if err != nil {
		return nil, err
	}
	// protojson's output is not stable in spacing: normalise it.
	var raw json.RawMessage = b
	return json.Marshal(raw)
}

func msTime(ms int64) *timestamppb.Timestamp {
	if ms == 0 {
		return nil
	}
	return timestamppb.New(time.UnixMilli(ms))
}

// startTime converts the start of a bucket (aggregates, usage) to a
// timestamp. Unlike msTime, 0 is a time: the bucket that starts at the
// Unix epoch (a Pi without a real-time clock boots there) has a start like
// every other.
func startTime(ms int64) *timestamppb.Timestamp {
	return timestamppb.New(time.UnixMilli(ms))
}

// tsMS converts an optional timestamp to ms since the epoch (0 when unset).
func tsMS(t *timestamppb.Timestamp) (int64, error) {
	if t == nil {
		return 0, nil
	}
	if err := t.CheckValid(); err != nil {
		return 0, invalidf("invalid timestamp: %v", err)
	}
	return t.AsTime().UnixMilli(), nil
}

// timeRange converts the from and to of a query to milliseconds, 0 for
// an absent bound (the store's "open"). A to at or before the Unix epoch
// is refused rather than read as "no end", and so is a to before from.
//
// Bounds below a millisecond are rounded up: records are kept to the
// millisecond, and one at ms m is before a bound t exactly when m is
// before t rounded up (rounded down, "to" left out the record of its own
// millisecond and "from" let it in).
func timeRange(fromTS, toTS *timestamppb.Timestamp) (from, to int64, err error) {
	if from, err = boundMS(fromTS); err != nil {
		return 0, 0, err
	}
	if to, err = boundMS(toTS); err != nil {
		return 0, 0, err
	}
	if toTS != nil && to <= 0 {
		return 0, 0, invalidf("to must be after 1970-01-01T00:00:00Z")
	}
	if fromTS != nil && toTS != nil && to < from {
		return 0, 0, invalidf("to is before from")
	}
	return from, to, nil
}

// boundMS is tsMS rounded up to the next millisecond when t has a part
// below one.
func boundMS(t *timestamppb.Timestamp) (int64, error) {
	ms, err := tsMS(t)
	if err == nil && t != nil && t.GetNanos()%int32(time.Millisecond) != 0 {
		ms++
	}
	return ms, err
}

func durationOf(d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, invalidf("invalid duration: %v", err)
	}
	v := d.AsDuration()
	if v < 0 {
		return 0, invalidf("negative duration %s", v)
	}
	return v, nil
}

func sourceSHA(src []byte) string {
	s := sha256.Sum256(src)
	return hex.EncodeToString(s[:])
}

// functionMessage converts a stored version. withSource adds the source
// and the manifest.
func (s *Server) functionMessage(r store.FunctionRecord, withSource bool) *v1.Function {
	f := &v1.Function{
		Name: r.Name, Version: r.Version, Active: r.Active, Sha256: r.SHA256,
		SourceSha256: sourceSHA(r.Source), CreateTime: msTime(r.CreatedMS),
	}
	if rf, ok := s.cfg.Functions.Running(r.Name); ok && rf.Version == r.Version && r.Version != 0 {
		f.Running = true
	}
	if m, err := trigger.ParseStoredManifest(r.Name+".yaml", r.Manifest); err == nil {
		f.Description = m.Description
		f.Stream = m.Stream
		for _, t := range m.Triggers {
			switch t.Kind {
			case trigger.KindMQTT:
				f.Triggers = append(f.Triggers, &v1.Trigger{Kind: &v1.Trigger_Mqtt{Mqtt: t.Spec}})
			case trigger.KindTimer:
				f.Triggers = append(f.Triggers, &v1.Trigger{Kind: &v1.Trigger_Timer{Timer: t.Spec}})
			case trigger.KindCron:
				f.Triggers = append(f.Triggers, &v1.Trigger{Kind: &v1.Trigger_Cron{Cron: t.Spec}})
			case trigger.KindHTTP:
				f.Triggers = append(f.Triggers, &v1.Trigger{Kind: &v1.Trigger_Http{Http: &v1.HttpTrigger{Methods: t.HTTP.Methods}}})
			case trigger.KindStream:
				f.Triggers = append(f.Triggers, &v1.Trigger{Kind: &v1.Trigger_Stream{Stream: t.Spec}})
			case trigger.KindState:
				f.Triggers = append(f.Triggers, &v1.Trigger{Kind: &v1.Trigger_State{State: &v1.StateTrigger{Function: t.State.Function, Prefix: t.State.Prefix}}})
			case trigger.KindUpload:
				f.Triggers = append(f.Triggers, &v1.Trigger{Kind: &v1.Trigger_Upload{Upload: &v1.UploadTrigger{Bucket: t.Upload.Bucket, Name: t.Upload.Name}}})
			}
		}
	}
	if withSource {
		f.Source = string(r.Source)
		f.Manifest = string(r.Manifest)
	}
	return f
}

func eventMessage(ev *luavm.Event) *v1.Event {
	if ev == nil {
		return nil
	}
	// A dead letter may hold a topic that is not UTF-8 (refused at intake
	// for that): protobuf strings must be, or the whole reply fails.
	e := &v1.Event{Id: ev.ID, Topic: validText(ev.Topic), Captures: ev.Captures, Time: msTime(ev.TS), Qos: uint32(ev.QoS)}
	for k, v := range ev.Captures {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			e.Captures = make(map[string]string, len(ev.Captures))
			for k, v := range ev.Captures {
				e.Captures[validText(k)] = validText(v)
			}
			break
		}
	}
	if utf8.Valid(ev.Payload) {
		e.PayloadText = string(ev.Payload)
	} else {
		e.Payload = ev.Payload
	}
	return e
}

// validText is s with each invalid UTF-8 sequence replaced by U+FFFD.
// Every string field filled from stored or function-made text goes
// through it: protobuf refuses to marshal invalid UTF-8, and one such
// string would fail the whole response (a list of logs, say) with a 500.
func validText(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

func slogLevel(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "error"
	case l >= slog.LevelWarn:
		return "warn"
	case l >= slog.LevelInfo:
		return "info"
	}
	return "debug"
}

func logMessage(js jsonOut, l store.LogRecord) *v1.LogLine {
	return &v1.LogLine{Seq: l.Seq, Function: l.Function, InvocationId: l.InvocationID, Level: l.Level,
		Msg: validText(l.Msg), Fields: js.object(l.Fields), Time: msTime(l.TS)}
}

func invocationMessage(js jsonOut, name string, inv Invocation) *v1.InvokeFunctionResponse {
	r := inv.Result
	out := &v1.InvokeFunctionResponse{InvocationId: r.InvocationID, Version: r.Version, Committed: inv.Committed}
	if inv.Err != nil {
		out.Error = validText(inv.Err.Error())
	}
	switch r.Kind {
	case luavm.ResultJSON:
		out.ResultKind = v1.ResultKind_RESULT_KIND_JSON
		out.Result = js.value(r.Value)
	case luavm.ResultString:
		out.ResultKind = v1.ResultKind_RESULT_KIND_STRING
		out.Result = structpb.NewStringValue(validText(string(r.Value)))
	}
	for _, e := range r.Effects {
		switch e.Kind {
		case luavm.EffectPublish:
			out.Effects = append(out.Effects, &v1.Effect{Kind: &v1.Effect_Publish{Publish: &v1.PublishEffect{
				Topic: validText(e.Topic), Payload: e.Payload, Qos: uint32(e.QoS), Retain: e.Retain}}})
		case luavm.EffectEmit:
			out.Effects = append(out.Effects, &v1.Effect{Kind: &v1.Effect_Emit{Emit: &v1.EmitEffect{Stream: validText(e.Stream), Record: js.value(e.Record)}}})
		case luavm.EffectBlobWrite:
			out.Effects = append(out.Effects, &v1.Effect{Kind: &v1.Effect_BlobWrite{BlobWrite: &v1.BlobWriteEffect{
				Bucket: validText(e.Bucket), Name: validText(e.Name), ContentType: validText(e.ContentType), Data: e.Payload}}})
		case luavm.EffectBlobDelete:
			out.Effects = append(out.Effects, &v1.Effect{Kind: &v1.Effect_BlobDelete{BlobDelete: &v1.BlobDeleteEffect{
				Bucket: validText(e.Bucket), Name: validText(e.Name)}}})
		}
	}
	for _, op := range r.State {
		sc := &v1.StateChange{Key: validText(op.Key), Delta: op.Delta}
		switch op.Op {
		case luavm.StateSet:
			sc.Op, sc.Value = "set", js.value(op.Value)
		case luavm.StateDelete:
			sc.Op = "delete"
		case luavm.StateIncr:
			sc.Op = "incr"
		}
		out.State = append(out.State, sc)
	}
	for _, l := range r.Logs {
		out.Logs = append(out.Logs, &v1.LogLine{Function: name, InvocationId: r.InvocationID, Level: slogLevel(l.Level),
			Msg: validText(l.Msg), Fields: js.object(l.Fields), Time: msTime(l.TimeMS)})
	}
	c := r.Cost
	out.Cost = &v1.Cost{Wall: durationpb.New(c.Wall), Steps: c.Steps, PeakMemoryBytes: c.PeakMemory, BytesIn: c.BytesIn,
		BytesOut: c.BytesOut, Effects: int32(c.Effects), Outcome: c.Outcome}
	return out
}

func microseconds(us int64) time.Duration { return time.Duration(us) * time.Microsecond }
