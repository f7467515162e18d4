package trigger

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// MinInterval is the shortest "@every" interval.
const MinInterval = time.Second

// Schedule says when a timer trigger fires next. Implementations are
// immutable and safe for concurrent use.
type Schedule interface {
	// Next returns the first activation time after t, or the zero time if
	// there is none within five years.
	Next(t time.Time) time.Time
}

// Every fires at a fixed interval after the previous activation. Intervals
// below [MinInterval], including the zero value, count as MinInterval.
type Every time.Duration

// Next returns t + the interval (at least MinInterval).
func (e Every) Next(t time.Time) time.Time { return t.Add(max(time.Duration(e), MinInterval)) }

// String returns "@every <interval>".
func (e Every) String() string { return "@every " + time.Duration(e).String() }

var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseSchedule parses a timer specification:
//
//   - "@every 30s": a fixed interval, at least [MinInterval];
//   - "@yearly" (or "@annually"), "@monthly", "@weekly", "@daily" (or
//     "@midnight"), "@hourly";
//   - a 5-field cron expression "minute hour day-of-month month day-of-week"
//     ("*/5 * * * *"), optionally prefixed with "CRON_TZ=Area/City ".
//
// Descriptors and cron expressions are evaluated in the location of the time
// passed to Next unless CRON_TZ is given. A schedule that never fires (for
// example "0 0 30 2 *") is an error. Errors wrap [ErrSchedule].
func ParseSchedule(spec string) (s Schedule, err error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, fmt.Errorf("%w: empty", ErrSchedule)
	}
	if len(spec) > 256 {
		return nil, fmt.Errorf("%w: longer than 256 bytes", ErrSchedule)
	}
	if rest, ok := strings.CutPrefix(spec, "@every"); ok {
		d, err := time.ParseDuration(strings.TrimSpace(rest))
		if err != nil || rest == "" || (rest[0] != ' ' && rest[0] != '\t') {
			return nil, fmt.Errorf("%w %q: want \"@every <duration>\", e.g. \"@every 30s\"", ErrSchedule, clip(spec))
		}
		if d < MinInterval {
			return nil, fmt.Errorf("%w %q: interval shorter than %s", ErrSchedule, clip(spec), MinInterval)
		}
		return Every(d), nil
	}
	if f := strings.Fields(spec); len(f) > 1 && strings.HasPrefix(f[0], "CRON_TZ=") && strings.HasPrefix(f[1], "@every") {
		// robfig would parse it as its own interval (under a second
		// rounded up, not refused, and without the phase kept across
		// restarts): an interval has no time zone.
		return nil, fmt.Errorf("%w %q: \"@every\" takes no CRON_TZ (an interval has no time zone)", ErrSchedule, clip(spec))
	}
	defer func() {
		if r := recover(); r != nil {
			s, err = nil, fmt.Errorf("%w %q: %v", ErrSchedule, clip(spec), r)
		}
	}()
	cs, err := cronParser.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrSchedule, clip(spec), err)
	}
	if cs.Next(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)).IsZero() {
		return nil, fmt.Errorf("%w %q: never fires", ErrSchedule, clip(spec))
	}
	return cs, nil
}

// parseTimer parses the value of a "timer:" trigger: everything
// ParseSchedule accepts, or a bare duration ("30s") meaning "@every 30s".
func parseTimer(spec string) (Schedule, error) {
	if d, err := time.ParseDuration(strings.TrimSpace(spec)); err == nil {
		if d < MinInterval {
			return nil, fmt.Errorf("%w %q: interval shorter than %s", ErrSchedule, clip(spec), MinInterval)
		}
		return Every(d), nil
	}
	return ParseSchedule(spec)
}

// ScheduleKey is a normalized form of a parsed schedule: two schedules
// with the same key fire at the same times.
func ScheduleKey(s Schedule) string { return scheduleKey(s, "") }

// scheduleKey is a normalized form of a parsed schedule: two schedules with
// the same key fire at the same times. spec is the fallback for a schedule
// of an unknown type.
func scheduleKey(s Schedule, spec string) string {
	switch s := s.(type) {
	case Every:
		return "every " + strconv.FormatInt(int64(max(time.Duration(s), MinInterval)), 10)
	case *cron.SpecSchedule:
		loc := ""
		if s.Location != nil {
			loc = s.Location.String()
		}
		return fmt.Sprintf("cron %x %x %x %x %x %x %s", s.Second, s.Minute, s.Hour, s.Dom, s.Month, s.Dow, loc)
	}
	return "spec " + strings.Join(strings.Fields(spec), " ")
}
