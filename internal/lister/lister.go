// Package lister turns a listing of pending keys into a stream of work items,
// never handing out more items than there are free worker slots.
package lister

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Entry is one listed key.
type Entry struct {
	Key  string
	ETag string
}

// Item is one unit of work handed to a worker.
type Item struct {
	Key  string
	ID   string
	ETag string // as listed
}

// Config configures a Lister.
type Config struct {
	// List calls fn with each page of pending keys, in order.
	List func(ctx context.Context, fn func([]Entry) error) error
	// ID returns the spec id of a pending key, ok false for keys that are not work.
	ID func(key string) (id string, ok bool)
	// Slots is the number of workers: items handed out and not yet Done.
	Slots int
	// Interval is the time between listings when the last one found no work.
	Interval time.Duration
	Logger   *slog.Logger
}

// maxRemembered bounds the sets of keys the lister remembers, so a queue full of
// junk cannot grow the agent's memory without end.
const maxRemembered = 100_000

// Lister lists pending keys and hands each to a worker once a slot is free.
type Lister struct {
	cfg   Config
	slots chan struct{} // one token per item handed out and not yet Done
	stale atomic.Bool   // a worker found the listing out of date

	mu       sync.Mutex
	inFlight map[string]bool
	rejected map[string]rejection // gate-rejected key → the ETag it was rejected at
	ignored  map[string]bool      // non-work keys already logged
	pass     int
}

type rejection struct {
	etag     string
	lastSeen int // pass in which the key was last listed
}

// New returns a Lister.
func New(cfg Config) *Lister {
	return &Lister{
		cfg:      cfg,
		slots:    make(chan struct{}, cfg.Slots),
		inFlight: map[string]bool{},
		rejected: map[string]rejection{},
		ignored:  map[string]bool{},
	}
}

// errStale ends a listing that a worker found out of date.
var errStale = errors.New("listing out of date")

// Run lists and dispatches until ctx ends. dispatch is called from Run's
// goroutine with a slot already taken for the item; the worker must call Done.
// A listing that handed out work is followed at once by another; otherwise the
// next comes at the next tick of a steady cadence of one interval, each tick
// jittered by ±5% so agents spread out. The cadence does not restart after
// work, so how soon a new spec is seen does not depend on when the last ended.
func (l *Lister) Run(ctx context.Context, dispatch func(Item)) {
	next := time.Now()
	for {
		found, err := l.listOnce(ctx, dispatch)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errStale) || (found && err == nil) {
			continue
		}
		if err != nil {
			l.cfg.Logger.Warn("list pending failed; retrying after the poll interval", "err", err)
		}
		for now := time.Now(); !next.After(now); {
			next = next.Add(l.cfg.Interval)
		}
		jitter := time.Duration(rand.Int64N(int64(l.cfg.Interval)/10+1)) - l.cfg.Interval/20
		t := time.NewTimer(time.Until(next) + jitter)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Stale tells the lister that an item it handed out was already gone or
// claimed elsewhere: the rest of its listing is likely gone too, so it lists
// afresh rather than hand out more keys other nodes have taken.
func (l *Lister) Stale() { l.stale.Store(true) }

// Done returns the slot of a finished item.
func (l *Lister) Done(it Item) {
	l.mu.Lock()
	delete(l.inFlight, it.Key)
	l.mu.Unlock()
	<-l.slots
}

// Reject remembers that key was refused at etag, so it is not handed out again
// while it is listed with the same ETag.
func (l *Lister) Reject(key, etag string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.rejected) < maxRemembered {
		l.rejected[key] = rejection{etag: etag, lastSeen: l.pass}
	}
}

// InFlight returns the number of items handed out and not yet Done.
func (l *Lister) InFlight() int { return len(l.slots) }

// listOnce makes one full listing and reports whether it handed out any work.
func (l *Lister) listOnce(ctx context.Context, dispatch func(Item)) (found bool, err error) {
	l.mu.Lock()
	l.pass++
	pass := l.pass
	l.mu.Unlock()
	l.stale.Store(false)

	listed := 0
	err = l.cfg.List(ctx, func(page []Entry) error {
		listed += len(page)
		items := l.candidates(page, pass)
		// Agents listing the same queue see the same order; shuffling the page
		// makes them collide on the same key far less often.
		rand.Shuffle(len(items), func(i, j int) { items[i], items[j] = items[j], items[i] })
		for _, it := range items {
			select {
			case l.slots <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			}
			if l.stale.Load() {
				<-l.slots
				return errStale
			}
			l.mu.Lock()
			if l.inFlight[it.Key] {
				l.mu.Unlock()
				<-l.slots
				continue
			}
			l.inFlight[it.Key] = true
			l.mu.Unlock()
			found = true
			dispatch(it)
		}
		return nil
	})
	if err == nil {
		l.forgetUnlisted(pass)
		l.cfg.Logger.Debug("listed pending", "keys", listed, "found_work", found)
	}
	return found, err
}

// candidates filters a page down to the keys worth handing out.
func (l *Lister) candidates(page []Entry, pass int) []Item {
	l.mu.Lock()
	defer l.mu.Unlock()
	items := make([]Item, 0, len(page))
	for _, e := range page {
		id, ok := l.cfg.ID(e.Key)
		if !ok {
			if !l.ignored[e.Key] && len(l.ignored) < maxRemembered {
				l.ignored[e.Key] = true
				l.cfg.Logger.Warn("ignoring key under pending/: not <id>.json", "key", e.Key)
			}
			continue
		}
		if r, ok := l.rejected[e.Key]; ok {
			if r.etag == e.ETag {
				r.lastSeen = pass
				l.rejected[e.Key] = r
				continue
			}
			delete(l.rejected, e.Key) // the spec changed: look again
		}
		if l.inFlight[e.Key] {
			continue
		}
		items = append(items, Item{Key: e.Key, ID: id, ETag: e.ETag})
	}
	return items
}

// forgetUnlisted drops rejections of keys a complete listing no longer showed.
func (l *Lister) forgetUnlisted(pass int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, r := range l.rejected {
		if r.lastSeen < pass {
			delete(l.rejected, k)
		}
	}
}
