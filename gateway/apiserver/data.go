package apiserver

import (
	"context"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/store"
)

// Record queries.

type recordService struct {
	v1.UnimplementedRecordServiceServer
	s *Server
}

// maxNameLen bounds stream, function and device names in queries.
const maxNameLen = 256

func checkName(what, v string) error {
	if len(v) > maxNameLen || !utf8.ValidString(v) {
		return invalidf("%s: at most %d bytes of UTF-8", what, maxNameLen)
	}
	return nil
}

// recordQuery builds a store query; fromSet tells a from at the Unix
// epoch (0 ms, a bound) from no from (open).
func recordQuery(stream, function, device string, from, to int64, fromSet bool) (store.Query, error) {
	for _, c := range [][2]string{{"stream", stream}, {"function", function}, {"device", device}} {
		if err := checkName(c[0], c[1]); err != nil {
			return store.Query{}, err
		}
	}
	return store.Query{Stream: stream, Function: function, Device: device, From: from, To: to, FromSet: fromSet}, nil
}

func limitOf(n int32) (int, error) {
	if n < 0 || n > store.MaxQueryLimit {
		return 0, invalidf("limit %d out of range [0, %d]", n, store.MaxQueryLimit)
	}
	return int(n), nil
}

func (r *recordService) QueryRecords(ctx context.Context, req *v1.QueryRecordsRequest) (*v1.QueryRecordsResponse, error) {
	from, to, err := timeRange(req.From, req.To)
	if err != nil {
		return nil, err
	}
	q, err := recordQuery(req.Stream, req.Function, req.Device, from, to, req.From != nil)
	if err != nil {
		return nil, err
	}
	if q.Limit, err = limitOf(req.Limit); err != nil {
		return nil, err
	}
	switch req.Order {
	case v1.Order_ORDER_UNSPECIFIED, v1.Order_ORDER_ASC:
	case v1.Order_ORDER_DESC:
		q.Desc = true
	default:
		return nil, invalidf("unknown order %d", req.Order)
	}
	if len(req.Cursor) > 1024 {
		return nil, invalidf("cursor too long")
	}
	q.Cursor = req.Cursor
	recs, next, err := r.s.cfg.Store.QueryRecords(ctx, q)
	if err != nil {
		return nil, err
	}
	release, err := r.s.structSlot(ctx)
	defer release()
	if err != nil {
		return nil, err
	}
	out := &v1.QueryRecordsResponse{NextCursor: next, Records: make([]*v1.Record, 0, len(recs))}
	js := jsonOutFor(ctx)
	for _, rec := range recs {
		out.Records = append(out.Records, &v1.Record{
			Id: rec.ID, Seq: rec.Seq, Stream: validText(rec.Stream), Function: rec.Function, Device: validText(rec.Device), EventId: rec.EventID,
			EventTime: msTime(rec.EventTS), ProcessedTime: msTime(rec.ProcessedTS), ClockSynced: rec.ClockSynced, Data: js.value(rec.Data),
		})
	}
	return out, nil
}

// maxBuckets bounds an aggregate's bucket count (range / bucket width,
// and the buckets found).
const maxBuckets = 100000

func (r *recordService) AggregateRecords(ctx context.Context, req *v1.AggregateRecordsRequest) (*v1.AggregateRecordsResponse, error) {
	from, to, err := timeRange(req.From, req.To)
	if err != nil {
		return nil, err
	}
	q, err := recordQuery(req.Stream, req.Function, req.Device, from, to, req.From != nil)
	if err != nil {
		return nil, err
	}
	if req.Field == "" || len(req.Field) > maxNameLen || !utf8.ValidString(req.Field) {
		return nil, invalidf("field: a dotted path of at most %d bytes is required", maxNameLen)
	}
	bucket, err := durationOf(req.Bucket)
	if err != nil {
		return nil, err
	}
	if bucket != 0 && bucket.Milliseconds() < 1 {
		return nil, invalidf("bucket shorter than 1ms")
	}
	if bucket%time.Millisecond != 0 {
		// It was cut to whole milliseconds (0.0015s made 1 ms buckets).
		return nil, invalidf("bucket %s is not a whole number of milliseconds (records are kept to the millisecond)", bucket)
	}
	// Each record scanned is decoded to read the field (~20 times its
	// size, up to 1 MiB a record): a few aggregates at a time.
	select {
	case r.s.aggs <- struct{}{}:
		defer func() { <-r.s.aggs }()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	// The store refuses a range of more buckets up front, and stops as soon
	// as it finds more: the cap bounds its memory too.
	bs, err := r.s.cfg.Store.Aggregate(ctx, store.AggQuery{Query: q, Field: req.Field, Bucket: bucket, MaxBuckets: maxBuckets})
	if err != nil {
		return nil, err
	}
	out := &v1.AggregateRecordsResponse{Buckets: make([]*v1.Bucket, 0, len(bs))}
	for _, b := range bs {
		// Without a bucket width the one bucket starts at from, and has
		// no start when from is open.
		var start *timestamppb.Timestamp
		if bucket != 0 || req.From != nil {
			start = startTime(b.Start)
		}
		out.Buckets = append(out.Buckets, &v1.Bucket{Start: start, Count: b.Count, Min: b.Min, Max: b.Max, Mean: b.Mean})
	}
	return out, nil
}

// State.

type stateService struct {
	v1.UnimplementedStateServiceServer
	s *Server
}

// maxKeyLen bounds a state key.
const maxKeyLen = 1024

func checkStateArgs(function, key string, needKey bool) error {
	if !trigger.ValidFunctionName(function) {
		return invalidf("invalid function name %q", clip(function))
	}
	if needKey && key == "" {
		return invalidf("empty key")
	}
	if len(key) > maxKeyLen || !utf8.ValidString(key) {
		return invalidf("key: at most %d bytes of UTF-8", maxKeyLen)
	}
	return nil
}

func (st *stateService) GetState(ctx context.Context, req *v1.GetStateRequest) (*v1.StateEntry, error) {
	if err := checkStateArgs(req.Function, req.Key, true); err != nil {
		return nil, err
	}
	v, ok, err := st.s.cfg.Store.GetState(ctx, req.Function, req.Key)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, notFoundf("state key %q of function %q", clip(req.Key), req.Function)
	}
	release, err := st.s.structSlot(ctx)
	defer release()
	if err != nil {
		return nil, err
	}
	return &v1.StateEntry{Key: req.Key, Value: jsonOutFor(ctx).value(v)}, nil
}

func (st *stateService) ListState(ctx context.Context, req *v1.ListStateRequest) (*v1.ListStateResponse, error) {
	if err := checkStateArgs(req.Function, req.Prefix, false); err != nil {
		return nil, err
	}
	limit, err := limitOf(req.Limit)
	if err != nil {
		return nil, err
	}
	if len(req.Cursor) > 2048 {
		return nil, invalidf("cursor too long")
	}
	kvs, next, err := st.s.cfg.Store.ListState(ctx, req.Function, req.Prefix, limit, req.Cursor)
	if err != nil {
		return nil, err
	}
	release, err := st.s.structSlot(ctx)
	defer release()
	if err != nil {
		return nil, err
	}
	out := &v1.ListStateResponse{NextCursor: next, Entries: make([]*v1.StateEntry, 0, len(kvs))}
	js := jsonOutFor(ctx)
	for _, kv := range kvs {
		out.Entries = append(out.Entries, &v1.StateEntry{Key: validText(kv.Key), Value: js.value(kv.Value)})
	}
	return out, nil
}

func (st *stateService) PutState(ctx context.Context, req *v1.PutStateRequest) (*v1.StateEntry, error) {
	if err := checkStateArgs(req.Function, req.Key, true); err != nil {
		return nil, err
	}
	b, err := stateValue(ctx, req.Value)
	if err != nil {
		return nil, err
	}
	if err := st.s.cfg.Store.PutState(ctx, req.Function, req.Key, b); err != nil {
		return nil, err
	}
	st.s.log.Info("state put", "audit", "state_put", "token", tokenFrom(ctx).Name, "peer", peerAddr(ctx), "function", req.Function, "key", clip(req.Key))
	out := &v1.StateEntry{Key: req.Key, Value: req.Value}
	if fromGateway(ctx) {
		out.Value = jsonOutFor(ctx).value(b) // as stored
		if out.Value == nil {
			out.Value = structpb.NewNullValue()
		}
	}
	return out, nil
}

// stateValue is the JSON text to store for a PutState value: the body as
// sent (checked, white space removed) from the REST gateway, the Value
// encoded from a gRPC client.
func stateValue(ctx context.Context, v *structpb.Value) ([]byte, error) {
	if v == nil {
		return nil, invalidf("a value is required (JSON)")
	}
	if raw := rawOf(v.ProtoReflect()); raw != nil && fromGateway(ctx) {
		b, err := checkJSON(raw)
		if err != nil {
			return nil, invalidf("value: %v", err)
		}
		return b, nil
	}
	if v.Kind == nil {
		return nil, invalidf("a value is required (JSON)")
	}
	b, err := encodeValue(v)
	if err != nil {
		return nil, invalidf("value: %v", err)
	}
	return b, nil
}

func (st *stateService) DeleteState(ctx context.Context, req *v1.DeleteStateRequest) (*v1.DeleteStateResponse, error) {
	if err := checkStateArgs(req.Function, req.Key, true); err != nil {
		return nil, err
	}
	if err := st.s.cfg.Store.DeleteState(ctx, req.Function, req.Key); err != nil {
		return nil, err
	}
	st.s.log.Info("state delete", "audit", "state_delete", "token", tokenFrom(ctx).Name, "peer", peerAddr(ctx), "function", req.Function, "key", clip(req.Key))
	return &v1.DeleteStateResponse{}, nil
}

// Usage.

type usageService struct {
	v1.UnimplementedUsageServiceServer
	s *Server
}

func (u *usageService) GetUsage(ctx context.Context, req *v1.GetUsageRequest) (*v1.GetUsageResponse, error) {
	if req.Function != "" && !trigger.ValidFunctionName(req.Function) {
		return nil, invalidf("invalid function name %q", clip(req.Function))
	}
	from, to, err := timeRange(req.From, req.To)
	if err != nil {
		return nil, err
	}
	bucket, err := durationOf(req.Bucket)
	if err != nil {
		return nil, err
	}
	if bucket%time.Minute != 0 {
		// (It was rounded down to whole minutes, 90s giving 1-minute buckets.)
		return nil, invalidf("bucket %s is not a whole number of minutes: usage is metered per minute", bucket)
	}
	us, err := u.s.cfg.Store.QueryUsage(ctx, req.Function, from, to, bucket)
	if err != nil {
		return nil, err
	}
	out := &v1.GetUsageResponse{Usage: make([]*v1.Usage, 0, len(us))}
	for _, x := range us {
		out.Usage = append(out.Usage, &v1.Usage{Function: x.Function, Start: startTime(x.TS), Invocations: x.Invocations, Errors: x.Errors,
			Steps: x.Steps, Wall: durationpb.New(microseconds(x.WallMicros)), BytesIn: x.BytesIn, BytesOut: x.BytesOut})
	}
	return out, nil
}
