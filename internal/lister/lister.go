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
	// ID returns the spec id of a pending key, or an error saying why the key
	// is not work.
	ID func(key string) (id string, err error)
	// Slots is the number of workers: items handed out and not yet Done.
	Slots int
	// Interval is the time between listings when the last one found no work.
	Interval time.Duration
	Logger   *slog.Logger
	// Bounced, if set, is told of each listing that handed out only keys it
	// had handed out before at the same ETag, after which the lister waits.
	Bounced func()
	// After is the timer the lister waits on; nil means time.After.
	After func(time.Duration) <-chan time.Time
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
	rejected map[string]remembered // gate-rejected key → the ETag it was rejected at
	tried    map[string]remembered // key → the ETag it was last handed out at
	ignored  map[string]bool       // non-work keys already logged
	pass     int
}

// remembered is a key remembered at an ETag until a listing no longer shows it.
type remembered struct {
	etag     string
	lastSeen int // pass in which the key was last listed
}

// New returns a Lister.
func New(cfg Config) *Lister {
	return &Lister{
		cfg:      cfg,
		slots:    make(chan struct{}, cfg.Slots),
		inFlight: map[string]bool{},
		rejected: map[string]remembered{},
		tried:    map[string]remembered{},
		ignored:  map[string]bool{},
	}
}

// errStale ends a listing that a worker found out of date.
var errStale = errors.New("listing out of date")

// errBusy ends a listing that waited a whole interval for a free slot: the
// rest of the page has aged, and a fresh listing keeps the poll alive.
var errBusy = errors.New("every slot busy for an interval")

// Run lists and dispatches until ctx ends. dispatch is called from Run's
// goroutine with a slot already taken for the item; the worker must call Done.
// A listing that handed out work is followed at once by another; otherwise the
// next comes at the next tick of a steady cadence of one interval, each tick
// jittered by ±5% so agents spread out. The cadence does not restart after
// work, so how soon a new spec is seen does not depend on when the last ended.
//
// Only a key not handed out before at the same ETag counts as work: keys that
// keep bouncing (claimed elsewhere, unreadable) come back in every listing, and
// relisting at once for them would spin on S3 without end.
//
// With every slot busy, the lister waits for one at most an interval, then
// lists afresh: a busy node keeps polling once an interval (its readiness
// rests on it) and never hands out a key from a listing older than that.
func (l *Lister) Run(ctx context.Context, dispatch func(Item)) {
	after := l.after()
	next := time.Now()
	for {
		found, handedOut, err := l.listOnce(ctx, dispatch)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errBusy) {
			continue // it waited an interval already
		}
		if found && (err == nil || errors.Is(err, errStale)) {
			continue
		}
		if handedOut > 0 && l.cfg.Bounced != nil {
			l.cfg.Bounced()
		}
		if err != nil && !errors.Is(err, errStale) {
			l.cfg.Logger.Warn("list pending failed; retrying after the poll interval", "err", err)
		}
		for now := time.Now(); !next.After(now); {
			next = next.Add(l.cfg.Interval)
		}
		jitter := time.Duration(rand.Int64N(int64(l.cfg.Interval)/10+1)) - l.cfg.Interval/20
		select {
		case <-ctx.Done():
			return
		case <-after(time.Until(next) + jitter):
		}
	}
}

func (l *Lister) after() func(time.Duration) <-chan time.Time {
	if l.cfg.After != nil {
		return l.cfg.After
	}
	return time.After
}

// takeSlot waits for a free slot: at once if one is free, else for up to an
// interval (errBusy after that).
func (l *Lister) takeSlot(ctx context.Context) error {
	select {
	case l.slots <- struct{}{}:
		return nil
	default:
	}
	busy := l.after()(l.cfg.Interval)
	select {
	case l.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-busy:
		return errBusy
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
		l.rejected[key] = remembered{etag: etag, lastSeen: l.pass}
	}
}

// InFlight returns the number of items handed out and not yet Done.
func (l *Lister) InFlight() int { return len(l.slots) }

// listOnce makes one full listing. It reports whether it handed out work (a key
// not handed out before at the same ETag) and how many items it handed out.
func (l *Lister) listOnce(ctx context.Context, dispatch func(Item)) (found bool, handedOut int, err error) {
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
			if err := l.takeSlot(ctx); err != nil {
				return err
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
			// A key too many to remember counts as work, as it did before.
			t, ok := l.tried[it.Key]
			if !ok || t.etag != it.ETag {
				found = true
			}
			if ok || len(l.tried) < maxRemembered {
				l.tried[it.Key] = remembered{etag: it.ETag, lastSeen: pass}
			}
			l.mu.Unlock()
			handedOut++
			dispatch(it)
		}
		return nil
	})
	switch {
	case err == nil:
		l.forgetUnlisted(pass)
		l.cfg.Logger.Debug("listed pending", "keys", listed, "found_work", found, "handed_out", handedOut)
	case errors.Is(err, errBusy):
		l.cfg.Logger.Debug("every worker busy for a poll interval; listing afresh", "keys", listed, "handed_out", handedOut)
	}
	return found, handedOut, err
}

// candidates filters a page down to the keys worth handing out.
func (l *Lister) candidates(page []Entry, pass int) []Item {
	l.mu.Lock()
	defer l.mu.Unlock()
	items := make([]Item, 0, len(page))
	for _, e := range page {
		id, err := l.cfg.ID(e.Key)
		if err != nil {
			if !l.ignored[e.Key] && len(l.ignored) < maxRemembered {
				l.ignored[e.Key] = true
				l.cfg.Logger.Warn("ignoring key under pending/: not work", "key", e.Key, "reason", err.Error())
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
		if t, ok := l.tried[e.Key]; ok {
			t.lastSeen = pass
			l.tried[e.Key] = t
		}
		if l.inFlight[e.Key] {
			continue
		}
		items = append(items, Item{Key: e.Key, ID: id, ETag: e.ETag})
	}
	return items
}

// forgetUnlisted drops the keys a complete listing no longer showed.
func (l *Lister) forgetUnlisted(pass int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range []map[string]remembered{l.rejected, l.tried} {
		for k, r := range m {
			if r.lastSeen < pass {
				delete(m, k)
			}
		}
	}
}
