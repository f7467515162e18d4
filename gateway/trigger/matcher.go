package trigger

import (
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// Matcher finds the functions whose patterns match a topic. Lookups walk a
// trie of topic levels, so their cost grows with the depth of the topic and
// the number of matching branches, not with the number of functions.
//
// A Matcher is safe for concurrent use: Match and Filters read an immutable
// snapshot; Set and Remove build a new one and swap it in atomically
// (copy-on-write, each update costs time proportional to all patterns). The
// zero value is not usable: use [NewMatcher].
type Matcher struct {
	mu    sync.Mutex // serializes updates
	funcs map[string][]*Pattern
	snap  atomic.Pointer[trie]
}

type entry struct {
	fn  int32 // index into trie.names
	pat int32 // index into trie.pats[fn]
}

type mnode struct {
	lit  map[string]*mnode
	plus *mnode  // "+" and "{name}"
	hash []entry // patterns ending with "#" here
	end  []entry // patterns ending exactly here
}

type trie struct {
	root    mnode
	names   []string     // function names, sorted
	pats    [][]*Pattern // per function, in the order given to Set
	filters []string
}

// NewMatcher returns an empty Matcher.
func NewMatcher() *Matcher {
	m := &Matcher{funcs: map[string][]*Pattern{}}
	m.snap.Store(&trie{})
	return m
}

// Set replaces the patterns of function (none removes it). Nil patterns in
// the slice are ignored. The slice is copied.
func (m *Matcher) Set(function string, patterns []*Pattern) {
	ps := make([]*Pattern, 0, len(patterns))
	for _, p := range patterns {
		if p != nil && len(p.segs) > 0 {
			ps = append(ps, p)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(ps) == 0 {
		delete(m.funcs, function)
	} else {
		m.funcs[function] = ps
	}
	m.snap.Store(build(m.funcs))
}

// SetAll replaces every function's patterns at once (one rebuild instead of
// one per function): afterwards the Matcher holds exactly funcs. Nil
// patterns and functions without patterns are left out.
func (m *Matcher) SetAll(funcs map[string][]*Pattern) {
	next := make(map[string][]*Pattern, len(funcs))
	for name, patterns := range funcs {
		ps := make([]*Pattern, 0, len(patterns))
		for _, p := range patterns {
			if p != nil && len(p.segs) > 0 {
				ps = append(ps, p)
			}
		}
		if len(ps) > 0 {
			next[name] = ps
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.funcs = next
	m.snap.Store(build(next))
}

// Remove removes function; removing an unknown function does nothing.
func (m *Matcher) Remove(function string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.funcs[function]; !ok {
		return
	}
	delete(m.funcs, function)
	m.snap.Store(build(m.funcs))
}

func build(funcs map[string][]*Pattern) *trie {
	t := &trie{names: make([]string, 0, len(funcs))}
	for name := range funcs {
		t.names = append(t.names, name)
	}
	sort.Strings(t.names)
	t.pats = make([][]*Pattern, len(t.names))
	var filters []string
	for fi, name := range t.names {
		t.pats[fi] = funcs[name]
		for pi, p := range funcs[name] {
			n := &t.root
			e := entry{int32(fi), int32(pi)}
			for _, seg := range p.segs {
				switch seg.kind {
				case segHash:
					n.hash = append(n.hash, e)
					n = nil
				case segPlus, segNamed:
					if n.plus == nil {
						n.plus = &mnode{}
					}
					n = n.plus
				default:
					if n.lit == nil {
						n.lit = map[string]*mnode{}
					}
					c := n.lit[seg.text]
					if c == nil {
						c = &mnode{}
						n.lit[seg.text] = c
					}
					n = c
				}
				if n == nil {
					break
				}
			}
			if n != nil {
				n.end = append(n.end, e)
			}
			filters = append(filters, p.filter)
		}
	}
	t.filters = minimalFilters(filters)
	return t
}

var bufPool = sync.Pool{New: func() any { b := make([]entry, 0, 16); return &b }}

// Match calls fn once for every function with a pattern matching topic,
// in function-name order, with the captures of the first of its patterns
// (in the order given to Set) that matches. Match works on the snapshot
// current when it starts: fn may call Set or Remove, which affect later
// calls only. Match does not allocate when nothing matches.
func (m *Matcher) Match(topic string, fn func(function string, captures map[string]string)) {
	t := m.snap.Load()
	if topic == "" || len(t.names) == 0 {
		return
	}
	bp := bufPool.Get().(*[]entry)
	buf := t.walk(&t.root, topic, 0, false, (*bp)[:0])
	if len(buf) > 1 {
		slices.SortFunc(buf, func(a, b entry) int {
			if a.fn != b.fn {
				return int(a.fn - b.fn)
			}
			return int(a.pat - b.pat)
		})
	}
	last := int32(-1)
	for _, e := range buf {
		if e.fn == last {
			continue
		}
		last = e.fn
		caps, ok := t.pats[e.fn][e.pat].Match(topic)
		if !ok {
			continue // cannot happen: the trie and Pattern.Match agree
		}
		fn(t.names[e.fn], caps)
	}
	if cap(buf) <= 1024 {
		*bp = buf[:0]
		bufPool.Put(bp)
	}
}

// walk collects the entries of n and below matching topic from pos on.
// done means every level of topic has been consumed.
func (t *trie) walk(n *mnode, topic string, pos int, done bool, out []entry) []entry {
	root := n == &t.root
	dollar := root && topic[0] == '$'
	if !dollar {
		out = append(out, n.hash...)
	}
	if done {
		return append(out, n.end...)
	}
	var level string
	next, last := 0, false
	if j := strings.IndexByte(topic[pos:], '/'); j < 0 {
		level, last = topic[pos:], true
	} else {
		level, next = topic[pos:pos+j], pos+j+1
	}
	if c := n.lit[level]; c != nil {
		out = t.walk(c, topic, next, last, out)
	}
	if n.plus != nil && !dollar {
		out = t.walk(n.plus, topic, next, last, out)
	}
	return out
}

// Filters returns the MQTT filters to subscribe so that every pattern can
// match: deduplicated, without filters covered by another one ("a/+" is
// dropped when "a/#" is present, so a broker delivers each message once),
// sorted. The caller may modify the returned slice.
func (m *Matcher) Filters() []string {
	return slices.Clone(m.snap.Load().filters)
}

// minimalFilters sorts and deduplicates fs and drops every filter that
// another one covers. It uses a trie of the filters, so its cost is about
// linear in the number of filters.
func minimalFilters(fs []string) []string {
	sort.Strings(fs)
	fs = slices.Compact(fs)
	root := &fnode{}
	split := make([][]string, len(fs))
	for i, f := range fs {
		split[i] = strings.Split(f, "/")
		root.insert(split[i])
	}
	out := fs[:0:0]
	for i, f := range fs {
		if !root.coversOther(split[i], 0, false) {
			out = append(out, f)
		}
	}
	return out
}

// fnode is a trie of MQTT filters, for minimalFilters.
type fnode struct {
	lit  map[string]*fnode
	plus *fnode
	hash bool // a filter ends with "#" here
	end  bool // a filter ends here
}

func (n *fnode) insert(levels []string) {
	for _, l := range levels {
		switch l {
		case "#":
			n.hash = true
			return
		case "+":
			if n.plus == nil {
				n.plus = &fnode{}
			}
			n = n.plus
		default:
			if n.lit == nil {
				n.lit = map[string]*fnode{}
			}
			c := n.lit[l]
			if c == nil {
				c = &fnode{}
				n.lit[l] = c
			}
			n = c
		}
	}
	n.end = true
}

// coversOther reports whether a filter in the trie other than f itself
// (levels) covers f: matches every topic f matches. n is the node reached
// after f's first i levels; differs records that the path so far is not f's
// own. A leading wildcard does not cover levels starting with '$'.
func (n *fnode) coversOther(f []string, i int, differs bool) bool {
	dollar := i == 0 && strings.HasPrefix(f[0], "$")
	if n.hash && !dollar && (differs || i != len(f)-1 || f[i] != "#") {
		return true
	}
	if i == len(f) {
		return n.end && differs
	}
	switch l := f[i]; l {
	case "#":
		return false // only a "#" here covers it, handled above
	case "+":
		return n.plus != nil && n.plus.coversOther(f, i+1, differs)
	default:
		if c := n.lit[l]; c != nil && c.coversOther(f, i+1, differs) {
			return true
		}
		return n.plus != nil && !dollar && n.plus.coversOther(f, i+1, true)
	}
}
