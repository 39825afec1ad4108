package admin

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/schedule"
	"github.com/cellos/fleetd/internal/store"
)

// ScheduleInfo is one schedule, for fleetd schedule ls.
type ScheduleInfo struct {
	Name  string `json:"name"`
	Cron  string `json:"cron"`
	Queue string `json:"queue"`
	// Last is the last due time submitted (zero: none yet); Next the next
	// one (zero: the expression is unusable).
	Last  time.Time `json:"last,omitzero"`
	Next  time.Time `json:"next,omitzero"`
	Error string    `json:"error,omitempty"`
}

// AddSchedule stores a schedule under {prefix}/schedules/: the spec,
// checked as fleetd submit checks it, with the expression and the lane
// (queueName) in its metadata. Every agent on the prefix submits
// pending/NAME-<due>.json to that lane at each due time, once for the fleet.
// An existing schedule of that name is refused: remove it first.
func (a *Admin) AddSchedule(ctx context.Context, prefix, queueName, name, expr string, f SpecFile) (ScheduleInfo, error) {
	if err := schedule.CheckName(name); err != nil {
		return ScheduleInfo{}, usagef("schedule add: %v", err)
	}
	e, err := schedule.Parse(expr)
	if err != nil {
		return ScheduleInfo{}, usagef("schedule add: --cron: %v", err)
	}
	layout := store.NewLayout(prefix, queueName)
	if err := layout.CheckID(schedule.SpecID(name, time.Now())); err != nil {
		return ScheduleInfo{}, usagef("schedule add: name %q: its specs' ids cannot be keys: %v", name, err)
	}
	if _, err := a.check(f, schedule.SpecID(name, time.Now())); err != nil {
		return ScheduleInfo{}, err
	}
	key := schedule.DefKey(prefix, name)
	_, err = a.store.Put(ctx, key, f.Body, store.PutOptions{IfAbsent: true,
		Metadata: map[string]string{schedule.MetaCron: strings.TrimSpace(expr), schedule.MetaQueue: strings.TrimSpace(queueName)}})
	if errors.Is(err, store.ErrPrecondition) && !errors.Is(err, store.ErrUnknown) {
		return ScheduleInfo{}, fmt.Errorf("schedule add: %s exists; remove it first (fleetd schedule rm %s)", name, name)
	}
	if err != nil && !errors.Is(err, store.ErrPrecondition) {
		return ScheduleInfo{}, fmt.Errorf("schedule add %s: %w", key, err)
	}
	return ScheduleInfo{Name: name, Cron: strings.TrimSpace(expr), Queue: strings.TrimSpace(queueName), Next: e.Next(time.Now())}, nil
}

// Schedules lists the schedules under prefix, with the last due time
// submitted and the next.
func (a *Admin) Schedules(ctx context.Context, prefix string) ([]ScheduleInfo, error) {
	dir := schedule.Dir(prefix)
	var names []string
	markers := map[string]bool{}
	err := a.store.List(ctx, dir, func(p store.Page) error {
		for _, o := range p.Objects {
			rest := strings.TrimPrefix(o.Key, dir)
			if n, ok := strings.CutSuffix(rest, ".json"); ok && schedule.CheckName(n) == nil {
				names = append(names, n)
			} else if n, ok := strings.CutSuffix(rest, ".last"); ok {
				markers[n] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("schedule ls: %w", err)
	}
	out := []ScheduleInfo{}
	for _, n := range names {
		h, err := a.store.Head(ctx, schedule.DefKey(prefix, n))
		if errors.Is(err, store.ErrNotFound) {
			continue // removed since the listing
		}
		if err != nil {
			return out, fmt.Errorf("schedule ls %s: %w", n, err)
		}
		info := ScheduleInfo{Name: n, Cron: h.Metadata[schedule.MetaCron], Queue: h.Metadata[schedule.MetaQueue]}
		if markers[n] {
			o, err := a.store.Get(ctx, schedule.MarkerKey(prefix, n), 64<<10)
			if err == nil {
				info.Last, _ = protocol.ParseMarker(o.Body)
			}
		}
		e, err := schedule.Parse(info.Cron)
		if err != nil {
			info.Error = err.Error()
		} else {
			from := time.Now()
			if info.Last.After(from) {
				from = info.Last
			}
			info.Next = e.Next(from)
		}
		out = append(out, info)
	}
	return out, nil
}

// RemoveSchedule deletes a schedule: agents stop submitting its due times
// within a poll interval. Its marker stays (a few bytes): it is never
// deleted, so a due time once submitted is never submitted again, not by an
// agent that still holds the schedule from its last listing, nor after the
// name is added again. Specs it submitted stay where they are.
func (a *Admin) RemoveSchedule(ctx context.Context, prefix, name string) error {
	if err := schedule.CheckName(name); err != nil {
		return usagef("schedule rm: %v", err)
	}
	key := schedule.DefKey(prefix, name)
	h, err := a.store.Head(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("schedule rm: no schedule %s", name)
	} else if err != nil {
		return fmt.Errorf("schedule rm %s: %w", key, err)
	}
	// The version read: one added again meanwhile stays.
	if err := a.store.Delete(ctx, key, h.ETag); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("schedule rm %s: %w", key, err)
	}
	return nil
}
