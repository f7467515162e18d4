package store

// readCache holds the latest value of the keys the committer reads back on
// every processing commit: function state (an increment reads the current
// number) and the per-minute usage meters. Without it each of those reads
// goes through Badger's memtables and the bloom filter and index of every
// level, on the committer's critical path.
//
// Only the committer goroutine uses it. It is write-through: every write
// the committer applies to a transaction updates it (process), so it holds
// what a read through the batch's transaction would return, including
// writes of the batch not yet durable. That is correct because the
// committer is the only writer of these key spaces; a failed batch clears
// it (failAll) before the state is reloaded from disk.
//
// It is bounded in bytes; when full, arbitrary entries (Go's map iteration
// order) are evicted, which keeps hot keys around in practice at no
// bookkeeping cost per hit.
type readCache struct {
	m     map[string]cachedValue
	bytes int64
	max   int64
}

type cachedValue struct {
	val   []byte
	found bool
}

// readCacheBytes bounds the cache. The hot set it serves (a function's
// counters and this minute's usage meter) is small.
const readCacheBytes = 256 << 10

// maxCachedValue is the largest value kept: bigger values are read from
// Badger every time.
const maxCachedValue = 512

// cacheEntryOverhead approximates a map entry's own memory.
const cacheEntryOverhead = 64

func newReadCache(max int64) *readCache {
	return &readCache{m: map[string]cachedValue{}, max: max}
}

// cacheable reports whether k belongs to a key space the cache serves.
func cacheable(k []byte) bool {
	return len(k) > 0 && (k[0] == pState || k[0] == pUsage)
}

func (c *readCache) get(k []byte) (cachedValue, bool) {
	v, ok := c.m[string(k)]
	return v, ok
}

// put records the value of k (found false: k does not exist). A value too
// big to keep removes k instead, so the cache never holds a stale one.
func (c *readCache) put(k, v []byte, found bool) {
	if old, ok := c.m[string(k)]; ok {
		c.bytes -= int64(len(k) + len(old.val) + cacheEntryOverhead)
		delete(c.m, string(k))
	}
	if len(v) > maxCachedValue {
		return
	}
	n := int64(len(k) + len(v) + cacheEntryOverhead)
	if c.bytes+n > c.max {
		for key, old := range c.m {
			c.bytes -= int64(len(key) + len(old.val) + cacheEntryOverhead)
			delete(c.m, key)
			if c.bytes+n <= c.max*3/4 {
				break
			}
		}
	}
	c.m[string(k)] = cachedValue{val: v, found: found}
	c.bytes += n
}

// reset empties the cache.
func (c *readCache) reset() {
	clear(c.m)
	c.bytes = 0
}
