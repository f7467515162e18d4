// Package store is moongate's durable Badger store: the event inbox, the
// per-target upstream outboxes, the local publish outbox, records with local
// query indexes, per-function state, invocation logs, dead letters, usage
// and deployed functions, in one Badger v4 database; and blobs (file
// uploads): content-addressed files under Options.BlobDir whose metadata is
// committed in the database (see blob.go and docs/blobs.md).
//
// Its promise: an event that Enqueue acknowledged is never lost, and the
// effects of processing it (Commit) are applied exactly once and all or
// nothing. Every write goes through one group committer that batches the
// waiting writers into one Badger transaction and one sync
// (DurabilityAlways, the default); a writer returns only when its batch is
// durable. Sequences (not the wall clock) give order and record ids; queues
// keep head cursors so that consuming never scans deleted keys.
//
// Typical use by the gateway:
//
//	st, err := store.Open(ctx, store.Options{Dir: "/var/lib/moongate", GatewayID: "gw1"})
//	seqs, err := st.Enqueue(ctx, entries)          // ack the MQTT message after this
//	pend, err := st.InboxPending(ctx, 0, 100)
//	res, err := st.Commit(ctx, &store.Commit{InboxSeq: pend[0].Seq, Records: recs})
//	if errors.Is(err, store.ErrAlreadyConsumed) { /* skip: already done */ }
//
// The zero Options (plus Dir) are the safe defaults: the low-memory profile
// sized for a Raspberry Pi Zero, DurabilityAlways, a 64 MiB free-space
// reserve. All Store methods are safe for concurrent use; after Close they
// return ErrClosed. See docs/store.md for the key layout and design.
package store
