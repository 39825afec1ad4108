package schedule

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/store"
)

// Store is the S3 queue as the runner reads it; *store.Store implements it.
type Store interface {
	store.Lister
	store.Getter
}

var _ Store = (*store.Store)(nil)

// Submitter submits one due time of a schedule to a lane, exactly once for
// the fleet (protocol.Protocol.SubmitDue on that lane's layout).
type Submitter interface {
	SubmitDue(ctx context.Context, quit <-chan struct{}, lane string, d protocol.Due) (bool, error)
}

// Config configures a Runner.
type Config struct {
	Prefix string
	// Interval is how often the schedules are listed while there are some
	// (the poll interval); IdleInterval while there are none.
	Interval, IdleInterval time.Duration
	// MaxSpecBytes bounds the read of a schedule's spec.
	MaxSpecBytes int64
	Logger       *slog.Logger
}

// Runner is one agent's part in the fleet's schedules: it lists them, and at
// each due time asks the Submitter to submit it; whichever agent gets there
// first does, the others find the marker moved.
type Runner struct {
	cfg    Config
	store  Store
	submit Submitter

	// Used by Run's goroutine alone.
	defs    map[string]*def // name → what it last read
	markers map[string]mark
}

type def struct {
	etag    string
	expr    Expr
	cron    string
	lane    string
	body    []byte
	created time.Time
	bad     bool // unreadable, logged once per version
}

type mark struct {
	etag string
	last time.Time
}

// New returns a runner. It starts nothing until Run.
func New(cfg Config, storage Store, submit Submitter) *Runner {
	return &Runner{cfg: cfg, store: storage, submit: submit, defs: map[string]*def{}, markers: map[string]mark{}}
}

// Run lists the schedules and submits their due times until ctx ends. It
// wakes at the next due time it knows of, and at least every interval.
func (r *Runner) Run(ctx context.Context) {
	for {
		next := r.tick(ctx)
		wait := r.cfg.IdleInterval
		if len(r.defs) > 0 {
			wait = r.cfg.Interval
		}
		if !next.IsZero() {
			wait = min(wait, max(0, time.Until(next)))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// tick lists the schedules, submits what is due, and returns the next due
// time it knows of (zero: none).
func (r *Runner) tick(ctx context.Context) time.Time {
	seenDefs, seenMarks := map[string]store.Object{}, map[string]store.Object{}
	dir := Dir(r.cfg.Prefix)
	err := r.store.List(ctx, dir, func(p store.Page) error {
		for _, o := range p.Objects {
			name := strings.TrimPrefix(o.Key, dir)
			if n, ok := strings.CutSuffix(name, ".json"); ok && CheckName(n) == nil {
				seenDefs[n] = o
			} else if n, ok := strings.CutSuffix(name, ".last"); ok && CheckName(n) == nil {
				seenMarks[n] = o
			}
		}
		return nil
	})
	if err != nil {
		if ctx.Err() == nil {
			r.cfg.Logger.Warn("list schedules failed; retrying", "event", "schedule.list_failed", "err", err)
		}
		return time.Time{}
	}
	for name := range r.defs {
		if _, ok := seenDefs[name]; !ok {
			delete(r.defs, name)
			delete(r.markers, name)
			r.cfg.Logger.Info("schedule removed", "event", "schedule.removed", "schedule", name)
		}
	}
	var next time.Time
	for name, o := range seenDefs {
		d := r.load(ctx, name, o)
		if d == nil || d.bad {
			continue
		}
		last, ok := r.marker(ctx, name, seenMarks)
		if !ok {
			continue
		}
		if last.IsZero() || last.Before(d.created) {
			last = d.created // due times after the schedule was added
		}
		now := time.Now()
		if due, ok := Latest(d.expr, last, now); ok {
			r.fire(ctx, name, d, due)
			last = due
		}
		from := last
		if now.After(from) {
			from = now
		}
		if n := d.expr.Next(from); next.IsZero() || n.Before(next) {
			next = n
		}
	}
	return next
}

// load returns the schedule's definition, read again when its ETag changed.
func (r *Runner) load(ctx context.Context, name string, o store.Object) *def {
	if d := r.defs[name]; d != nil && d.etag == o.ETag {
		return d
	}
	obj, err := r.store.Get(ctx, o.Key, r.cfg.MaxSpecBytes)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) && ctx.Err() == nil {
			r.cfg.Logger.Warn("read schedule failed; retrying", "event", "schedule.read_failed", "schedule", name, "err", err)
		}
		return nil
	}
	d := &def{etag: obj.ETag, cron: obj.Metadata[MetaCron], lane: obj.Metadata[MetaQueue], body: obj.Body, created: obj.LastModified}
	d.expr, err = Parse(d.cron)
	if err != nil {
		d.bad = true
		r.cfg.Logger.Error("schedule unusable; fix or remove it", "event", "schedule.invalid", "schedule", name, "err", err)
	} else {
		r.cfg.Logger.Info("schedule loaded", "event", "schedule.loaded", "schedule", name, "cron", d.cron, "queue_name", d.lane)
	}
	r.defs[name] = d
	return d
}

// marker returns the last due time submitted (zero: none yet), read again
// when the marker's ETag changed; false if it could not be read.
func (r *Runner) marker(ctx context.Context, name string, seen map[string]store.Object) (time.Time, bool) {
	o, ok := seen[name]
	if !ok {
		delete(r.markers, name)
		return time.Time{}, true
	}
	if m, ok := r.markers[name]; ok && m.etag == o.ETag {
		return m.last, true
	}
	obj, err := r.store.Get(ctx, o.Key, 64<<10)
	if errors.Is(err, store.ErrNotFound) {
		return time.Time{}, true
	}
	if err != nil {
		return time.Time{}, false
	}
	last, err := protocol.ParseMarker(obj.Body)
	if err != nil {
		r.cfg.Logger.Warn("schedule marker unreadable", "event", "schedule.marker_unreadable", "schedule", name, "err", err)
		return time.Time{}, false
	}
	r.markers[name] = mark{etag: obj.ETag, last: last}
	return last, true
}

// fire submits one due time.
func (r *Runner) fire(ctx context.Context, name string, d *def, due time.Time) {
	quit := ctx.Done()
	sub, err := r.submit.SubmitDue(ctx, quit, d.lane, protocol.Due{ID: SpecID(name, due), Schedule: name, At: due,
		MarkerKey: MarkerKey(r.cfg.Prefix, name), DefKey: DefKey(r.cfg.Prefix, name), Body: d.body})
	switch {
	case errors.Is(err, protocol.ErrHeld):
		// Another agent is at it.
	case err != nil:
		if ctx.Err() == nil {
			r.cfg.Logger.Warn("schedule submission failed; the next tick or recovery finishes it", "event", "schedule.submit_failed",
				"schedule", name, "due", due.UTC().Format(time.RFC3339), "err", err)
		}
	case sub:
		r.cfg.Logger.Info("schedule due", "event", "schedule.fired", "schedule", name, "due", due.UTC().Format(time.RFC3339),
			"spec_id", SpecID(name, due))
	}
}
