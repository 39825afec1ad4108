// Package schedule is fleetd's periodic specs: schedules stored under
// {prefix}/schedules/, their cron expressions, and the loop every agent runs
// that submits each due time's spec exactly once for the whole fleet (the
// protocol's schedule intent does the writes).
package schedule

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// Expr is a parsed schedule: the due times it names.
type Expr interface {
	// Next returns the first due time after t.
	Next(t time.Time) time.Time
}

// MinEvery is the shortest @every interval: due times are named to the
// second.
const MinEvery = time.Second

// Parse reads a 5-field cron expression (minute hour day-of-month month
// day-of-week, in UTC unless it starts with CRON_TZ=Zone), a descriptor
// (@hourly, @daily, @weekly, @monthly, @yearly) or @every DURATION. @every
// due times are multiples of the duration since Go's zero time, the same on
// every agent, not counted from when an agent started.
func Parse(expr string) (Expr, error) {
	expr = strings.TrimSpace(expr)
	if rest, ok := strings.CutPrefix(expr, "@every"); ok {
		d, err := time.ParseDuration(strings.TrimSpace(rest))
		switch {
		case err != nil:
			return nil, fmt.Errorf("cron %q: @every takes a duration such as 5s, 15m, 1h30m: %w", expr, err)
		case d < MinEvery || d%time.Second != 0:
			return nil, fmt.Errorf("cron %q: @every takes whole seconds, at least %v", expr, MinEvery)
		}
		return every(d), nil
	}
	spec := expr
	if !strings.HasPrefix(spec, "CRON_TZ=") && !strings.HasPrefix(spec, "TZ=") {
		spec = "CRON_TZ=UTC " + spec
	}
	s, err := cron.ParseStandard(spec)
	if err != nil {
		return nil, fmt.Errorf("cron %q: want 5 fields (minute hour day-of-month month day-of-week), @hourly/@daily/@weekly/@monthly/@yearly or @every DURATION: %w", expr, err)
	}
	if _, ok := s.(*cron.SpecSchedule); !ok {
		return nil, fmt.Errorf("cron %q: not a calendar schedule", expr)
	}
	return s, nil
}

type every time.Duration

func (e every) Next(t time.Time) time.Time {
	d := time.Duration(e)
	return t.Truncate(d).Add(d)
}

// Latest returns the latest due time of e in (after, now], and false if
// there is none: after a time when no agent ran, only the most recent missed
// due time is submitted.
func Latest(e Expr, after, now time.Time) (time.Time, bool) {
	first := e.Next(after)
	if first.After(now) {
		return time.Time{}, false
	}
	if ev, ok := e.(every); ok {
		return now.Truncate(time.Duration(ev)), true
	}
	// Walk from a week back when that has a due time, else from after (a
	// rare schedule: few steps either way).
	d := first
	if week := now.Add(-7 * 24 * time.Hour); week.After(after) {
		if n := e.Next(week); !n.After(now) {
			d = n
		}
	}
	for range 1 << 20 {
		n := e.Next(d)
		if n.After(now) || n.IsZero() {
			return d, true
		}
		d = n
	}
	return d, true
}

// namePattern is what a schedule name may be: it becomes part of keys
// (schedules/NAME.json, pending/NAME-<due>.json) and of spec ids.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// CheckName returns an error saying why name cannot be a schedule's.
func CheckName(name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("schedule name %q: want 1 to 128 of A-Z a-z 0-9 _ . -, starting with a letter or digit (it becomes part of S3 keys and spec ids)", name)
	}
	return nil
}

// DueLayout names a due time in a spec id: UTC, to the second.
const DueLayout = "20060102T150405Z"

// SpecID is the id of the spec a schedule submits for a due time: the same
// for every agent, so a create-only PUT of it is idempotent.
func SpecID(name string, due time.Time) string {
	return name + "-" + due.UTC().Format(DueLayout)
}

// DefKey is a schedule's definition: the spec bytes, the expression and the
// lane in metadata.
func DefKey(prefix, name string) string { return Dir(prefix) + name + ".json" }

// MarkerKey is a schedule's marker: the last due time submitted, moved
// forward by compare-and-swap (protocol.SubmitDue), and never deleted (not by
// schedule rm either): its absence means nothing was ever submitted.
func MarkerKey(prefix, name string) string { return Dir(prefix) + name + ".last" }

// Dir is {prefix}/schedules/.
func Dir(prefix string) string {
	p := strings.TrimRight(prefix, "/")
	if p == "" {
		return "schedules/"
	}
	return p + "/schedules/"
}

// Metadata of a schedule's definition.
const (
	MetaCron  = "fleetd-cron"
	MetaQueue = "fleetd-queue" // the lane its specs go to ("" : the prefix's own)
)
