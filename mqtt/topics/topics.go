// Package topics implements the MQTT 3.1.1 / 5.0 rules for topic names and
// topic filters: validation, matching, and whether one filter stays inside
// another. It uses only the standard library, so that every package that
// handles topics (the broker and client in package mqtt, the Lua runtime's
// mqtt.publish) applies the same rules without depending on the broker.
// Its functions are safe for concurrent use and do not allocate unless they
// return an error.
package topics

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxLen is the MQTT limit on the encoded length of a topic name or filter.
const MaxLen = 65535

const sharePrefix = "$share/"

// ValidName reports whether topic is a valid MQTT topic name for a publish:
// 1 to 65535 bytes of UTF-8 without NUL and without the wildcard characters
// '+' and '#'. The error wraps ErrInvalidTopic.
func ValidName(topic string) error {
	if err := validString(topic); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidTopic, err)
	}
	if i := strings.IndexAny(topic, "+#"); i >= 0 {
		return fmt.Errorf("%w: wildcard %q at byte %d", ErrInvalidTopic, topic[i], i)
	}
	return nil
}

// ValidFilter reports whether filter is a valid MQTT topic filter: 1 to 65535
// bytes of UTF-8 without NUL, '+' only as a whole level, '#' only as the whole
// last level, and for a shared subscription ("$share/GROUP/FILTER") a
// non-empty group without wildcards and a valid FILTER. The error wraps
// ErrInvalidFilter.
func ValidFilter(filter string) error {
	if err := validString(filter); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidFilter, err)
	}
	f := filter
	if strings.HasPrefix(f, sharePrefix) {
		rest := f[len(sharePrefix):]
		group, sub, ok := strings.Cut(rest, "/")
		if !ok || group == "" || sub == "" {
			return fmt.Errorf("%w: %q: shared subscription needs $share/GROUP/FILTER", ErrInvalidFilter, filter)
		}
		if strings.ContainsAny(group, "+#") {
			return fmt.Errorf("%w: %q: wildcard in share group", ErrInvalidFilter, filter)
		}
		f = sub
	}
	for i := 0; ; i++ {
		level, rest, more := strings.Cut(f, "/")
		switch {
		case level == "#":
			if more {
				return fmt.Errorf("%w: %q: '#' must be the last level", ErrInvalidFilter, filter)
			}
		case level == "+":
		case strings.ContainsAny(level, "+#"):
			return fmt.Errorf("%w: %q: wildcard must occupy a whole level (level %d)", ErrInvalidFilter, filter, i)
		}
		if !more {
			break
		}
		f = rest
	}
	return nil
}

func validString(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty")
	case len(s) > MaxLen:
		return fmt.Errorf("%d bytes, over the MQTT limit of %d", len(s), MaxLen)
	case !utf8.ValidString(s):
		return fmt.Errorf("not valid UTF-8")
	case strings.IndexByte(s, 0) >= 0:
		return fmt.Errorf("contains NUL")
	}
	return nil
}

// unshare returns the FILTER of a shared subscription filter
// ("$share/GROUP/FILTER") and any other filter as it is; false for a
// "$share/" filter without a group.
func unshare(filter string) (string, bool) {
	rest, ok := strings.CutPrefix(filter, sharePrefix)
	if !ok {
		return filter, true
	}
	i := strings.IndexByte(rest, '/')
	if i <= 0 {
		return "", false
	}
	return rest[i+1:], true
}

// Match reports whether the MQTT topic filter matches topic. '+' matches
// exactly one level (which may be empty), '#' matches the parent level and
// any number of child levels, and a filter starting with a wildcard does not
// match a topic starting with '$'. A shared subscription filter
// ("$share/GROUP/FILTER") matches like its FILTER. Match does not validate
// its arguments: an invalid filter (such as "a/#/b") or a topic containing
// wildcards simply does not match. It does not allocate.
func Match(filter, topic string) bool {
	filter, ok := unshare(filter)
	if !ok {
		return false
	}
	if topic == "" || strings.ContainsAny(topic, "+#") {
		return false
	}
	return matchLevels(filter, topic)
}

// matchLevels is Match for a non-empty topic without wildcards and a filter
// without the $share prefix.
func matchLevels(filter, topic string) bool {
	if filter == "" {
		return false
	}
	if topic[0] == '$' && (filter[0] == '+' || filter[0] == '#') {
		return false
	}
	for {
		var fl, tl string
		var fmore, tmore bool
		fl, filter, fmore = strings.Cut(filter, "/")
		if fl == "#" {
			return !fmore
		}
		tl, topic, tmore = strings.Cut(topic, "/")
		if fl != "+" && fl != tl {
			return false
		}
		switch {
		case !fmore && !tmore:
			return true
		case !tmore:
			// Topic ended; "a/#" still matches "a".
			return filter == "#"
		case !fmore:
			return false
		}
	}
}

// Covers reports whether every topic matched by sub is also matched by
// allowed, i.e. whether a subscription to sub (a filter or a plain topic)
// stays inside the allowed filter. Both must be valid filters.
func Covers(allowed, sub string) bool {
	sub, ok := unshare(sub)
	if !ok {
		return false
	}
	// A wildcard-led allowed filter does not reach '$' topics.
	if sub != "" && sub[0] == '$' && allowed != "" && (allowed[0] == '+' || allowed[0] == '#') {
		return false
	}
	for {
		var al, sl string
		var amore, smore bool
		al, allowed, amore = strings.Cut(allowed, "/")
		if al == "#" {
			return true
		}
		sl, sub, smore = strings.Cut(sub, "/")
		switch {
		case sl == "#":
			return false // sub reaches deeper than a non-# allowed level
		case al == "+":
		case al != sl:
			return false
		}
		switch {
		case !amore && !smore:
			return true
		case !smore:
			return allowed == "#"
		case !amore:
			return false
		}
	}
}

// MatchAny reports whether any filter in filters matches topic, like Match
// for each in turn but checking topic once.
func MatchAny(filters []string, topic string) bool {
	if topic == "" || strings.ContainsAny(topic, "+#") {
		return false
	}
	for _, f := range filters {
		if strings.HasPrefix(f, sharePrefix) {
			if Match(f, topic) {
				return true
			}
			continue
		}
		if matchLevels(f, topic) {
			return true
		}
	}
	return false
}
