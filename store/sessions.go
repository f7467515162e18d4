package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// The broker session space ('B' + opaque key) holds what the embedded MQTT
// broker must keep across restarts: persistent sessions, their
// subscriptions and queued messages, and retained messages (see
// mqtt.SessionStore). The store does not interpret the keys or values.
//
// SetSession and DeleteSession do not wait for the disk: the change joins
// the committer's queue in call order and is written with the next batch.
// So any write queued after it, durable or not (the acknowledgement of a
// local publish, say), reaches the disk in the same transaction or a later
// one: a publish the broker queued for an offline device is either still in
// the publish outbox or in its session, whatever the moment of a crash.
// Session writes are not refused when the disk is below its reserve (the
// acknowledgement that follows would be accepted and the message lost);
// they mostly move data out of the publish outbox.
const pSession = 'B'

// maxSessionKey bounds session keys (Badger's limit is 65,000 bytes).
const maxSessionKey = 1024

func sessionKey(k []byte) []byte {
	out := make([]byte, 1+len(k))
	out[0] = pSession
	copy(out[1:], k)
	return out
}

func checkSessionKey(k []byte) error {
	if len(k) == 0 || len(k) > maxSessionKey {
		return fmt.Errorf("%w: session key of %d bytes (1..%d)", ErrInvalid, len(k), maxSessionKey)
	}
	return nil
}

// SetSession queues a write of a broker session item. It returns once the
// change is queued (it may block while the committer's queue is full), not
// when it is durable; the change is applied before anything queued later.
// A write that fails later (the batch fails) is logged.
func (s *Store) SetSession(key, value []byte) error {
	if err := checkSessionKey(key); err != nil {
		return err
	}
	// A queued message with its properties, the payload in base64 (JSON).
	if limit := 2*s.opts.MaxValueBytes + 64<<10; len(value) > limit {
		return fmt.Errorf("%w: session item of %d bytes, limit %d", ErrTooLarge, len(value), limit)
	}
	k, v := sessionKey(key), bytes.Clone(value)
	if v == nil {
		v = []byte{}
	}
	return s.queue(&request{est: s.vEntryEst(len(k), len(v)), fn: func(b *batch) error {
		b.set(k, v)
		return nil
	}})
}

// DeleteSession queues the removal of a broker session item, like
// SetSession. Removing a missing key is not an error.
func (s *Store) DeleteSession(key []byte) error {
	if err := checkSessionKey(key); err != nil {
		return err
	}
	k := sessionKey(key)
	return s.queue(&request{est: entryEst(len(k), 0), fn: func(b *batch) error {
		b.del(k)
		return nil
	}})
}

// LoadSessions calls fn with every broker session item, in key order. The
// slices are valid only during the call. An error from fn stops the scan
// and is returned.
func (s *Store) LoadSessions(ctx context.Context, fn func(key, value []byte) error) error {
	return s.view(ctx, func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pSession}, PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			item := it.Item()
			err := item.Value(func(v []byte) error { return fn(item.Key()[1:], v) })
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// queue hands r to the committer without waiting for it; an error it ends
// with is logged.
func (s *Store) queue(r *request) error {
	r.done = make(chan struct{})
	r.async = true
	if r.est > s.maxTxnSize/2 {
		return fmt.Errorf("%w: a write of about %d bytes, more than one transaction takes (%d)", ErrTooLarge, r.est, s.maxTxnSize/2)
	}
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	r.queued = time.Now()
	s.reqCh <- r
	return nil
}

// FlushSessions returns once every broker session write queued before
// the call is durable (as durable as Options.Durability makes commits):
// an empty request joins the committer's queue behind them
// (mqtt.SessionFlusher).
func (s *Store) FlushSessions(ctx context.Context) error {
	return s.submit(ctx, &request{fn: func(*batch) error { return nil }})
}

// logAsync logs the error of a request nobody waits for.
func (s *Store) logAsync(r *request) {
	if r.async && r.err != nil && !errors.Is(r.err, ErrClosed) {
		s.log.Error("queued broker session write failed", "err", r.err)
	}
}
