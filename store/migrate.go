package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"

	badger "github.com/dgraph-io/badger/v4"
)

// migration upgrades the on-disk format from From to From+1.
type migration struct {
	From int
	// Name says what the step changes; it is logged.
	Name string
	// Apply rewrites the data of a database at format From. It chooses its
	// own transactions (a large database does not fit in one) and must be
	// idempotent: after a crash or an error halfway it runs again from the
	// start, on a database still marked From. The format version moves to
	// From+1 only after Apply returned nil. log is the store's logger.
	Apply func(ctx context.Context, db *badger.DB, log *slog.Logger) error
}

// migrations are the steps from format 1 up to FormatVersion, in order.
// A release that changes the format appends the step from the previous
// FormatVersion and raises FormatVersion, so that a newer binary upgrades
// a data directory of any older release, one step at a time.
var migrations = []migration{
	{
		// Format 2 adds blob sends (outbox values of a new kind, and the
		// 'O' index): nothing to rewrite, but a format-1 build must not
		// open a directory whose outboxes it cannot read.
		From: 1, Name: "outboxes may hold blob sends (no data rewritten)",
		Apply: func(context.Context, *badger.DB, *slog.Logger) error { return nil },
	},
	{
		// Format 3 indexes each record with one key (stream, function,
		// device, time) instead of four (time; stream; function; device):
		// three fewer Badger entries per record written.
		From: 2, Name: "one index key per record instead of four",
		Apply: reindexRecords,
	},
}

// reindexRecords writes the format-3 index key of every record, then drops
// the format-2 index keys. It starts by dropping every format-3 key, so that
// keys written by an earlier attempt for records dropped since (by a
// format-2 build, after a rollback) do not stay. A record that cannot be
// decoded is logged and left unindexed, as dropping it does.
func reindexRecords(ctx context.Context, db *badger.DB, log *slog.Logger) error {
	if err := db.DropPrefix([]byte{pIndex}); err != nil {
		return err
	}
	wb := db.NewWriteBatch()
	defer wb.Cancel()
	err := db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pRecord}}) // no prefetch: see scanSeqCtx
		defer it.Close()
		n := 0
		for it.Rewind(); it.Valid(); it.Next() {
			if n++; n%4096 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			item := it.Item()
			if len(item.Key()) != 9 {
				continue
			}
			var r Record
			err := item.Value(func(v []byte) error {
				var err error
				r, err = decodeRecord(v)
				return err
			})
			if err != nil {
				log.Error("store: an undecodable record is left out of the index", "seq", keySeq(item.Key()), "err", err)
				continue
			}
			if err := wb.Set(indexKey(&r), nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := wb.Flush(); err != nil {
		return err
	}
	return db.DropPrefix([]byte{pIndexV2})
}

// formatPlan is the format a store is opened at and the steps that lead
// there: the release's own (FormatVersion, migrations) unless a test sets
// Options.plan.
type formatPlan struct {
	version int
	steps   []migration
}

func (o *Options) formatPlan() formatPlan {
	if o.plan != nil {
		return *o.plan
	}
	return formatPlan{version: FormatVersion, steps: migrations}
}

// readFormat returns the recorded format version, 0 when there is none.
func readFormat(db *badger.DB) (int, error) {
	var n int
	err := db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(keyFormat)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		v, err := item.ValueCopy(nil)
		if err != nil {
			return err
		}
		n, err = strconv.Atoi(string(v))
		if err != nil || n < 1 {
			return fmt.Errorf("%w: unreadable version %q", ErrFormatVersion, v)
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrFormatVersion) {
		return 0, fmt.Errorf("store: read format version: %w", err)
	}
	return n, err
}

// migrate brings a database at format have up to plan.version, one step at
// a time, each step followed by its version bump. It refuses (with
// ErrFormatVersion and what to do) a database newer than the plan or one
// the plan has no path from.
func migrate(ctx context.Context, db *badger.DB, dir string, have int, plan formatPlan, log *slog.Logger) error {
	if have > plan.version {
		return fmt.Errorf("%w: the data directory %s is format %d, written by a newer moongate; this build reads formats up to %d. "+
			"Run the newer release again (downgrading is not supported), or restore a copy of the directory taken before the upgrade",
			ErrFormatVersion, dir, have, plan.version)
	}
	for have < plan.version {
		var step *migration
		for i := range plan.steps {
			if plan.steps[i].From == have {
				step = &plan.steps[i]
				break
			}
		}
		if step == nil {
			return fmt.Errorf("%w: the data directory %s is format %d and this build (format %d) has no migration from it. "+
				"Upgrade through an intermediate release that reads format %d first, or restore a backup",
				ErrFormatVersion, dir, have, plan.version, have)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		log.Warn("store: migrating the data directory", "dir", dir, "from", have, "to", have+1, "step", step.Name)
		if err := step.Apply(ctx, db, log); err != nil {
			return fmt.Errorf("store: migration of %s from format %d to %d (%s) failed; the directory is still format %d and the step runs again at the next start: %w",
				dir, have, have+1, step.Name, have, err)
		}
		// Durable before anything else writes in the new format.
		err := db.Update(func(txn *badger.Txn) error {
			return txn.Set(keyFormat, []byte(strconv.Itoa(have+1)))
		})
		if err == nil {
			err = db.Sync()
		}
		if err != nil {
			return fmt.Errorf("store: record format %d after migrating %s: %w", have+1, dir, err)
		}
		have++
		log.Info("store: data directory migrated", "dir", dir, "format", have)
	}
	return nil
}
