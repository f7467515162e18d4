// Package store is moongate's durable Badger store: the event inbox, the
// per-target outboxes, records, per-function state, invocation logs, dead
// letters and deployed functions, with group commit, quotas and a disk guard.
package store
