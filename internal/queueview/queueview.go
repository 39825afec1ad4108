// Package queueview is the queue as operators read it: bounded counts that
// say when they are lower bounds, the oldest pending spec, the pause state,
// the specs in flight and the latest results. fleetd status, the UI and the
// depth an autoscaler reads all go through it, so each bound is defined once
// and a number means the same wherever it is shown.
//
// It only reads: every write goes through the protocol.
package queueview

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cellos/fleetd/internal/depth"
	"github.com/cellos/fleetd/internal/store"
)

// Store is the bucket as the read model reads it; *store.Store implements it.
type Store interface {
	store.Lister
	store.Getter
	store.Header
}

var _ Store = (*store.Store)(nil)

// The bounds of one reading, unless Limits says otherwise. completed/ and
// failed/ grow without end, and a reading must stay cheap: a count that stops
// at its bound says so (AtLeast).
const (
	// KeyLimit bounds the keys listed per state.
	KeyLimit = 10_000
	// ResultLimit bounds the latest results read (HEAD) per state.
	ResultLimit = 100
	// LeaseLimit bounds the leases read (GET) per reading.
	LeaseLimit = 1_000
)

// Limits bound the work of one reading; a zero field takes its default.
type Limits struct {
	Keys    int // keys listed per state (KeyLimit)
	Results int // latest results read per state (ResultLimit)
	Leases  int // leases read per reading (LeaseLimit)
}

// withDefaults fills the zero fields.
func (l Limits) withDefaults() Limits {
	if l.Keys <= 0 {
		l.Keys = KeyLimit
	}
	if l.Results <= 0 {
		l.Results = ResultLimit
	}
	if l.Leases <= 0 {
		l.Leases = LeaseLimit
	}
	return l
}

// Count is the number of specs in one state.
type Count struct {
	State string
	N     int
	// AtLeast: the listing stopped at its limit with more keys to come, so N
	// is a lower bound.
	AtLeast bool
}

// Delayed is one spec not to start before Due.
type Delayed struct {
	ID  string
	Due time.Time
	Key string
	// In is how long until it is due, on the server's clock (0: due now).
	In time.Duration
}

// Listing is the work keys of one state, up to a limit.
type Listing struct {
	State      store.Area
	Objects    []store.Object
	ServerTime time.Time
	// AtLeast: a work key past the limit was listed, so there are more.
	AtLeast bool
	// Paused (pending/ only): the lane's pause marker was listed.
	Paused bool
	// Delayed (pending/ only): the specs under pending/.delayed/, which
	// sort first, up to the limit, in key order.
	Delayed []Delayed
}

// Count is the listing's count.
func (l Listing) Count() Count {
	return Count{State: string(l.State), N: len(l.Objects), AtLeast: l.AtLeast}
}

// Oldest is the age of the oldest key listed, on the server's clock.
func (l Listing) Oldest() time.Duration {
	var oldest time.Duration
	for _, o := range l.Objects {
		oldest = max(oldest, l.ServerTime.Sub(o.LastModified))
	}
	return oldest
}

// errLimit stops a listing at its limit.
var errLimit = errors.New("listing limit reached")

// Walked is what a walk of one state saw.
type Walked struct {
	// N is the number of work keys walked; a lower bound when AtLeast.
	N int
	// AtLeast: a work key past the limit was listed, so there are more.
	AtLeast bool
	// ServerTime is the store's clock at the last page listed.
	ServerTime time.Time
}

// Walk lists st in layout and calls work with each work key, up to limit,
// and other (if not nil) with each other key (the pause marker, delayed
// specs). It stops at the first work key past the limit, so a state of
// exactly limit keys is counted exactly and one of more is marked AtLeast,
// without listing further. Both are called with the page's server time.
func Walk(ctx context.Context, storage Store, layout store.Layout, st store.Area, limit int,
	work, other func(o store.Object, serverTime time.Time)) (Walked, error) {
	var w Walked
	err := storage.List(ctx, layout.Dir(st), func(p store.Page) error {
		w.ServerTime = p.ServerTime
		for _, o := range p.Objects {
			if _, ok := layout.ID(st, o.Key); !ok {
				if other != nil {
					other(o, p.ServerTime)
				}
				continue
			}
			if w.N == limit {
				w.AtLeast = true
				return errLimit
			}
			w.N++
			work(o, p.ServerTime)
		}
		return nil
	})
	if err != nil && !errors.Is(err, errLimit) {
		return w, fmt.Errorf("list %s: %w", layout.Dir(st), err)
	}
	return w, nil
}

// List lists the work keys of st in layout, up to limit (see Walk), and in
// pending/ the pause marker and the delayed specs.
func List(ctx context.Context, storage Store, layout store.Layout, st store.Area, limit int) (Listing, error) {
	l := Listing{State: st}
	w, err := Walk(ctx, storage, layout, st, limit,
		func(o store.Object, _ time.Time) { l.Objects = append(l.Objects, o) },
		func(o store.Object, now time.Time) {
			if st != store.Pending {
				return
			}
			l.Paused = l.Paused || o.Key == layout.PauseKey()
			if id, due, err := layout.ParseDelayed(o.Key); err == nil && len(l.Delayed) < limit {
				l.Delayed = append(l.Delayed, Delayed{ID: id, Due: due, Key: o.Key, In: max(0, due.Sub(now))})
			}
		})
	l.ServerTime, l.AtLeast = w.ServerTime, w.AtLeast
	return l, err
}

// Depth is how deep a lane is for an autoscaler: pending/ listed up to
// lim.Keys and leases/ up to lim.Leases, ⌈keys/1000⌉ LISTs each.
func Depth(ctx context.Context, storage Store, layout store.Layout, lane string, lim Limits) (depth.Lane, error) {
	lim = lim.withDefaults()
	d := depth.Lane{Lane: lane, Source: "listing"}
	pending, err := List(ctx, storage, layout, store.Pending, lim.Keys)
	if err != nil {
		return d, err
	}
	leases, err := List(ctx, storage, layout, store.Leases, lim.Leases)
	if err != nil {
		return d, err
	}
	d.Pending, d.Running = len(pending.Objects), len(leases.Objects)
	d.AtLeast = pending.AtLeast || leases.AtLeast
	d.OldestPendingSeconds = pending.Oldest().Seconds()
	return d, nil
}
