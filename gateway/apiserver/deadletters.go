package apiserver

import (
	"context"
	"errors"
	"fmt"
	"strings"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
	"github.com/moongate-edge/moongate/gateway/config"
	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/store"
)

type deadLetterService struct {
	v1.UnimplementedDeadLetterServiceServer
	s *Server
}

func (d *deadLetterService) message(dl store.DeadLetter) *v1.DeadLetter {
	m := &v1.DeadLetter{Seq: dl.Seq, Function: dl.Function, Key: validText(dl.Key), Error: validText(dl.Error), Attempts: int32(dl.Attempts), Time: msTime(dl.TS)}
	if ev, err := d.s.cfg.Functions.DecodeEvent(dl.Event); err == nil {
		m.Event = eventMessage(ev)
	} else if len(dl.Event) > 0 {
		// Not an inbox event: a record line a sync target refused (its
		// id in the key), or the head of an event kept for diagnosis.
		// Left out, the dead letter listed no content at all.
		m.Event = &v1.Event{PayloadText: validText(string(dl.Event))}
		if strings.HasPrefix(dl.Function, syncDeadLetters) {
			m.Event.Id = validText(dl.Key)
		}
	}
	return m
}

func checkFunctionFilter(function string) error {
	if target, ok := strings.CutPrefix(function, syncDeadLetters); ok {
		if !config.ValidSyncTargetName(target) {
			return invalidf("invalid sync target name %q in %q", clip(target), clip(function))
		}
		return nil
	}
	if function != "" && function != intakeDeadLetters && function != publishDeadLetters && !trigger.ValidFunctionName(function) {
		return invalidf("invalid function name %q", clip(function))
	}
	return nil
}

// syncDeadLetters is sync.DeadLetterPrefix: the function name of records
// a sync target refused for good is this prefix and the target's name.
const syncDeadLetters = "sync:"

// intakeDeadLetters is gateway.IntakeDeadLetters: the function name of
// messages refused at intake.
const intakeDeadLetters = "_intake"

// publishDeadLetters is gateway.PublishDeadLetters: local publishes that
// cannot be carried out (an invalid topic or QoS).
const publishDeadLetters = "_publish"

func (d *deadLetterService) ListDeadLetters(ctx context.Context, req *v1.ListDeadLettersRequest) (*v1.ListDeadLettersResponse, error) {
	if err := checkFunctionFilter(req.Function); err != nil {
		return nil, err
	}
	limit, err := limitOf(req.Limit)
	if err != nil {
		return nil, err
	}
	dls, err := d.s.cfg.Store.ListDeadLetters(ctx, req.Function, req.After, limit)
	if err != nil {
		return nil, err
	}
	out := &v1.ListDeadLettersResponse{DeadLetters: make([]*v1.DeadLetter, 0, len(dls))}
	for _, dl := range dls {
		out.DeadLetters = append(out.DeadLetters, d.message(dl))
		out.NextAfter = dl.Seq
	}
	return out, nil
}

// maxReplayErrors bounds ReplayDeadLettersResponse.errors.
const maxReplayErrors = 100

func (d *deadLetterService) ReplayDeadLetters(ctx context.Context, req *v1.ReplayDeadLettersRequest) (_ *v1.ReplayDeadLettersResponse, err error) {
	sel := 0
	if req.Seq != 0 {
		sel++
	}
	if req.Function != "" {
		sel++
	}
	if req.All {
		sel++
	}
	if sel != 1 {
		return nil, invalidf("give exactly one of seq, function, all")
	}
	if err := checkFunctionFilter(req.Function); err != nil {
		return nil, err
	}
	out := &v1.ReplayDeadLettersResponse{}
	// Audited however the call ends: one that fails part way (the
	// caller's deadline, the inbox quota, a stop) replayed some already.
	defer func() {
		args := []any{"audit", "replay", "token", tokenFrom(ctx).Name, "peer", peerAddr(ctx),
			"seq", req.Seq, "function", req.Function, "all", req.All, "replayed", out.Replayed, "skipped", out.Skipped}
		if err != nil {
			args = append(args, "err", err)
		}
		d.s.log.Info("dead letters replayed", args...)
	}()
	skip := func(dl store.DeadLetter, err error) {
		out.Skipped++
		if len(out.Errors) < maxReplayErrors {
			out.Errors = append(out.Errors, fmt.Sprintf("dead letter %d (%s): %v", dl.Seq, dl.Function, err))
		}
	}
	replay := func(dl store.DeadLetter) error {
		switch dl.Function {
		case intakeDeadLetters:
			skip(dl, errors.New("refused at intake (oversized or invalid message): cannot be replayed"))
			return nil
		case publishDeadLetters:
			skip(dl, errors.New("a local publish that cannot be carried out (invalid topic or QoS): cannot be replayed"))
			return nil
		}
		// One atomic write: the event enters the inbox and the dead letter
		// goes, so a crash leaves exactly one of them.
		if err := d.s.cfg.Functions.Requeue(ctx, dl.Function, dl.Key, dl.Event, dl.Seq); err != nil {
			// Refusals of this dead letter alone are skipped; what would
			// refuse the next one too (a full inbox, a stop) ends the call.
			// store.IsPermanent: its event can never enter the inbox again
			// (a quota lowered since it was taken).
			if errors.Is(err, ErrNotFound) || errors.Is(err, ErrInvalidArgument) || store.IsPermanent(err) {
				skip(dl, err)
				return nil
			}
			return err
		}
		out.Replayed++
		return nil
	}
	if req.Seq != 0 {
		dls, err := d.s.cfg.Store.ListDeadLetters(ctx, "", req.Seq-1, 1)
		if err != nil {
			return nil, err
		}
		if len(dls) == 0 || dls[0].Seq != req.Seq {
			return nil, notFoundf("dead letter %d", req.Seq)
		}
		if err := replay(dls[0]); err != nil {
			return nil, err
		}
	} else {
		// Only the dead letters present now: a replayed event that fails
		// again becomes a new dead letter, which this call must not replay
		// again (it would never end).
		var last uint64
		for {
			dls, err := d.s.cfg.Store.ListDeadLetters(ctx, req.Function, last, 256)
			if err != nil {
				return nil, err
			}
			if len(dls) == 0 {
				break
			}
			last = dls[len(dls)-1].Seq
		}
		var after uint64
		for after < last {
			dls, err := d.s.cfg.Store.ListDeadLetters(ctx, req.Function, after, 256)
			if err != nil {
				return nil, err
			}
			if len(dls) == 0 {
				break
			}
			for _, dl := range dls {
				if dl.Seq > last {
					after = last
					break
				}
				if err := replay(dl); err != nil {
					return nil, err
				}
				after = dl.Seq
			}
		}
	}
	return out, nil
}

func (d *deadLetterService) PurgeDeadLetters(ctx context.Context, req *v1.PurgeDeadLettersRequest) (*v1.PurgeDeadLettersResponse, error) {
	if (req.Function == "") == !req.All {
		return nil, invalidf("give exactly one of function, all")
	}
	if err := checkFunctionFilter(req.Function); err != nil {
		return nil, err
	}
	n, err := d.s.cfg.Store.PurgeDeadLetters(ctx, req.Function)
	d.s.log.Info("dead letters purged", "audit", "purge", "token", tokenFrom(ctx).Name, "peer", peerAddr(ctx),
		"function", req.Function, "all", req.All, "purged", n, "err", err)
	if err != nil {
		return nil, err
	}
	return &v1.PurgeDeadLettersResponse{Purged: int64(n)}, nil
}
