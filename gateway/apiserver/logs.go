package apiserver

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
	"github.com/moongate-edge/moongate/gateway/trigger"
)

type logService struct {
	v1.UnimplementedLogServiceServer
	s *Server
}

func checkLogArgs(function, invocationID string) error {
	if function != "" && !trigger.ValidFunctionName(function) {
		return invalidf("invalid function name %q", clip(function))
	}
	return checkName("invocation_id", invocationID)
}

func (l *logService) ListLogs(ctx context.Context, req *v1.ListLogsRequest) (*v1.ListLogsResponse, error) {
	if err := checkLogArgs(req.Function, req.InvocationId); err != nil {
		return nil, err
	}
	limit, err := limitOf(req.Limit)
	if err != nil {
		return nil, err
	}
	// next_after is the last line read, matching or not: the next page
	// starts past the lines that do not match.
	lines, next, err := l.s.cfg.Store.ScanLogs(ctx, req.Function, req.InvocationId, req.After, limit)
	if err != nil {
		return nil, err
	}
	release, err := l.s.structSlot(ctx)
	defer release()
	if err != nil {
		return nil, err
	}
	out := &v1.ListLogsResponse{NextAfter: next, Lines: make([]*v1.LogLine, 0, len(lines))}
	js := jsonOutFor(ctx)
	cost := 0
	for i, x := range lines {
		// A native gRPC client's page ends at maxStructCost of protobuf
		// encoding (up to 5.5 times the JSON).
		if cost += js.cost(x.Fields) + len(x.Msg); i > 0 && cost > maxStructCost {
			out.NextAfter = lines[i-1].Seq
			break
		}
		out.Lines = append(out.Lines, logMessage(js, x))
	}
	return out, nil
}

// maxTail bounds FollowLogsRequest.tail.
const maxTail = 1000

// followBatch is how many lines a follower reads from the store at once.
const followBatch = 256

func (l *logService) FollowLogs(req *v1.FollowLogsRequest, stream v1.LogService_FollowLogsServer) error {
	ctx := stream.Context()
	if err := checkLogArgs(req.Function, req.InvocationId); err != nil {
		return err
	}
	if req.Tail < 0 || req.Tail > maxTail {
		return invalidf("tail %d out of range [0, %d]", req.Tail, maxTail)
	}
	if n := l.s.followers.Add(1); n > int32(l.s.cfg.MaxFollowers) {
		l.s.followers.Add(-1)
		return status.Errorf(codes.ResourceExhausted, "too many log follows open (%d): try again later", l.s.cfg.MaxFollowers)
	}
	defer l.s.followers.Add(-1)
	st := l.s.cfg.Store
	js := jsonOutFor(stream.Context())
	after := req.After
	// The start position is taken before the headers go out: a client that
	// waits for them knows that every line committed after that is
	// streamed. (Sent first, a line committed between the headers and the
	// skip to the end was skipped.)
	//
	// Every read moves after past the lines it read, matching or not, so a
	// follower of an invocation does not read the same lines again; a read
	// that moves nothing is at the end.
	if after == 0 && req.Tail == 0 {
		// Start at the end, without reading the log (up to its quota,
		// 16 MiB by default, for every follow).
		if next := st.LogsNext(); next > 0 {
			after = next - 1
		}
	} else if after == 0 {
		// Start at the end: skip to the last line, noting where the last
		// tail lines are; the loop below streams them page by page. (Kept
		// whole, the lines of a tail of 1,000 held up to 16 MiB per follow
		// while a slow client read them: 1 GiB for 64 follows.)
		var ring []uint64
		for {
			lines, next, err := st.ScanLogs(ctx, req.Function, req.InvocationId, after, followBatch*4)
			if err != nil {
				return err
			}
			if next == after {
				break
			}
			after = next
			for _, x := range lines {
				ring = append(ring, x.Seq)
			}
			if len(ring) > int(req.Tail) {
				ring = append(ring[:0], ring[len(ring)-int(req.Tail):]...)
			}
		}
		if len(ring) > 0 {
			after = ring[0] - 1
		}
	}
	// Headers now: the stream is established before the first line.
	if err := stream.SendHeader(metadata.Pairs(streamStartedMD, "1")); err != nil {
		return err
	}
	poll := time.NewTicker(l.s.cfg.FollowPoll)
	defer poll.Stop()
	for {
		// Take the signal before reading, so a commit between the read and
		// the wait is not missed.
		wake := l.s.cfg.Functions.Committed()
		for {
			lines, next, err := st.ScanLogs(ctx, req.Function, req.InvocationId, after, followBatch)
			if err != nil {
				return err
			}
			for _, x := range lines {
				if err := stream.Send(logMessage(js, x)); err != nil {
					return err
				}
			}
			if next == after {
				break
			}
			after = next
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-poll.C:
		}
	}
}
