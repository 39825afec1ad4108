// Package lister turns a listing of pending keys into a stream of work items
// on a channel. It sends each item only when a worker takes it, so it never
// holds more keys than there are idle workers; how many workers there are is
// the receiver's business alone.
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

	pass int // the listing that handed it out
}

// Config configures a Lister.
type Config struct {
	// List calls fn with each page of pending keys, in order.
	List func(ctx context.Context, fn func([]Entry) error) error
	// ID returns the spec id of a pending key, or an error saying why the key
	// is not work.
	ID func(key string) (id string, err error)
	// Interval is the time between listings when the last one found no work.
	Interval time.Duration
	Logger   *slog.Logger
	// Bounced, if set, is told of each listing that handed out only keys it
	// had handed out before at the same ETag, after which the lister waits.
	Bounced func()
	// After is the timer the lister waits on between listings; nil means
	// time.After.
	After func(time.Duration) <-chan time.Time
	// PauseKey, if listed, pauses the lane: the lister hands out nothing while
	// a listing shows it. It sorts before the ids it holds back (see
	// store.Layout.PauseKey), so it is seen on the first page.
	PauseKey string
	// Paused, if set, is told after each listing whether the lane is paused.
	Paused func(paused bool)
	// BusyAfter is the timer that bounds a wait for an idle worker; nil means
	// time.After. It is its own hook because it may start while a worker is
	// only between two items, which a test's timer must not count as a wait.
	BusyAfter func(time.Duration) <-chan time.Time
	// Rand draws the poll's jitter and the page's shuffle; nil: a source of
	// its own, seeded at random. A simulation passes a seeded one so that a
	// seed replays. Used by the lister's goroutine alone.
	Rand *rand.Rand
	// Hints, if set, hands out keys that may just have become pending (a
	// store's bucket notifications) between listings. While it is up,
	// listings come every NetInterval instead of every Interval: the poll is
	// then a safety net for lost events.
	Hints       Hints
	NetInterval time.Duration
	// Idle blocks until a worker waits for an item (true) or ctx ends
	// (false). The lister asks Hints for a hint only then, so it never holds
	// a hint no worker here can take. Required with Hints.
	Idle func(ctx context.Context) bool
}

// Hints is a source of keys that may just have become pending: bucket
// notifications (*notify.Source). A hint is only where to look.
type Hints interface {
	// Next blocks until a hint arrives or ctx ends (its only error). done
	// must be called with whether a worker took the key; one not taken goes
	// to another agent.
	Next(ctx context.Context) (key string, done func(taken bool), err error)
	// State reports whether hints flow, and a channel closed at the next
	// change.
	State() (up bool, changed <-chan struct{})
}

// hintHandoff bounds the wait for a worker to take a hint: one was idle when
// it was asked for, but a listed key may have taken it since; another agent
// may have one free now.
const hintHandoff = 100 * time.Millisecond

// maxRemembered bounds the sets of keys the lister remembers, so a queue full of
// junk cannot grow the agent's memory without end.
const maxRemembered = 100_000

// Lister lists pending keys and hands each to a worker once one is idle.
type Lister struct {
	cfg        Config
	stale      atomic.Bool   // a worker found the listing out of date
	staleAlarm chan struct{} // wakes a send blocked on busy workers; capacity 1
	interval   atomic.Int64  // the current poll interval (Interval or NetInterval)
	paused     atomic.Bool   // the last listing found the lane paused
	listNow    chan struct{} // a hint of a marker: list at once; capacity 1

	mu       sync.Mutex
	inFlight map[string]bool
	skipped  map[string]remembered // key the gate skipped → the ETag it was skipped at
	tried    map[string]remembered // key → the ETag it was last handed out at
	ignored  map[string]bool       // non-work keys already logged
	pass     int
	handed   int // items the current listing handed out
	bounced  int // of those, found gone or claimed elsewhere
}

// remembered is a key remembered at an ETag until a listing no longer shows it.
type remembered struct {
	etag     string
	lastSeen int // pass in which the key was last listed
}

// New returns a Lister.
func New(cfg Config) *Lister {
	if cfg.Rand == nil {
		cfg.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	l := &Lister{
		cfg:        cfg,
		staleAlarm: make(chan struct{}, 1),
		listNow:    make(chan struct{}, 1),
		inFlight:   map[string]bool{},
		skipped:    map[string]remembered{},
		tried:      map[string]remembered{},
		ignored:    map[string]bool{},
	}
	l.interval.Store(int64(cfg.Interval))
	return l
}

// errStale ends a listing that a worker found out of date.
var errStale = errors.New("listing out of date")

// errPaused ends a listing that found the lane paused.
var errPaused = errors.New("lane paused")

// errBusy ends a listing that waited a whole interval for an idle worker: the
// rest of the page has aged, and a fresh listing keeps the poll alive.
var errBusy = errors.New("every worker busy for an interval")

// Run lists and sends items on out until ctx ends; it never closes out. out
// should be unbuffered, so that a send completes only when a worker takes the
// item: the lister then holds at most one key no worker has, and the number
// of workers receiving is the one bound on work in flight. The worker must
// call Done with each item it received.
// A listing that handed out work is followed at once by another; otherwise the
// next comes at the next tick of a steady cadence of one interval, each tick
// jittered by ±5% so agents spread out. The cadence does not restart after
// work, so how soon a new spec is seen does not depend on when the last ended.
//
// Only a key not handed out before at the same ETag counts as work: keys that
// keep bouncing (claimed elsewhere, unreadable) come back in every listing, and
// relisting at once for them would spin on S3 without end.
//
// With every worker busy, the lister waits for one at most an interval, then
// lists afresh: a busy node keeps polling once an interval (its readiness
// rests on it) and never hands out a key from a listing older than that.
//
// With Hints, a second goroutine hands out hinted keys as they come, and the
// interval is NetInterval while hints flow. Each change of that lists at
// once: events may have been lost around it.
func (l *Lister) Run(ctx context.Context, out chan<- Item) {
	var pump sync.WaitGroup
	defer pump.Wait() // the caller closes out once Run returns
	if l.cfg.Hints != nil {
		pump.Go(func() { l.pumpHints(ctx, out) })
	}
	after := orTimeAfter(l.cfg.After)
	next := time.Now()
	for {
		var changed <-chan struct{}
		if l.cfg.Hints != nil {
			_, changed = l.cfg.Hints.State() // before the listing: a change during it lists again
		}
		l.currentInterval() // the busy wait's bound, and the log's
		found, handedOut, err := l.listOnce(ctx, out)
		if ctx.Err() != nil {
			return
		}
		if err == nil || errors.Is(err, errPaused) {
			l.paused.Store(errors.Is(err, errPaused))
			if l.cfg.Paused != nil {
				l.cfg.Paused(errors.Is(err, errPaused))
			}
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
		if err != nil && !errors.Is(err, errStale) && !errors.Is(err, errPaused) {
			l.cfg.Logger.Warn("list pending failed; retrying after the poll interval", "event", "lister.list_failed", "err", err)
		}
		interval := l.currentInterval() // the listing may have found the lane paused or resumed
		// The next tick is one interval after the last: a wait that ended
		// early (its jitter was negative) must not be followed by another
		// listing at once. After work, the cadence catches up to now.
		next = next.Add(interval)
		for now := time.Now(); !next.After(now); {
			next = next.Add(interval)
		}
		jitter := time.Duration(l.cfg.Rand.Int64N(int64(interval)/10+1)) - interval/20
		select {
		case <-ctx.Done():
			return
		case <-after(time.Until(next) + jitter):
		case <-changed:
			next = time.Now()
		case <-l.listNow:
		}
	}
}

// currentInterval sets and returns the poll interval: NetInterval while
// hints flow, except on a paused lane, which no hint resumes for every agent
// (the marker's deletion is one event, for one agent of the lane).
func (l *Lister) currentInterval() time.Duration {
	interval := l.cfg.Interval
	if l.cfg.Hints != nil {
		if up, _ := l.cfg.Hints.State(); up && !l.paused.Load() {
			interval = l.cfg.NetInterval
		}
	}
	l.interval.Store(int64(interval))
	return interval
}

// pumpHints hands each hinted key to an idle worker until ctx ends. It asks
// for a hint only while a worker is idle; a hint no worker takes within
// hintHandoff goes back, for another agent. A hint of a key that is not work
// (the pause marker made or removed) makes the lister list at once.
func (l *Lister) pumpHints(ctx context.Context, out chan<- Item) {
	for l.cfg.Idle(ctx) {
		key, done, err := l.cfg.Hints.Next(ctx)
		if err != nil {
			return // ctx ended
		}
		id, err := l.cfg.ID(key)
		if err != nil {
			done(true)
			select {
			case l.listNow <- struct{}{}:
			default:
			}
			continue
		}
		l.mu.Lock()
		skip := l.inFlight[key] || l.paused.Load()
		if !skip {
			l.inFlight[key] = true
		}
		l.mu.Unlock()
		if skip {
			done(true) // ours already, or held back: a listing finds it
			continue
		}
		// pass -1: a hint belongs to no listing, and says nothing of one.
		it := Item{Key: key, ID: id, pass: -1}
		timer := time.NewTimer(hintHandoff)
		select {
		case out <- it:
			timer.Stop()
			done(true)
			l.cfg.Logger.Debug("hint handed to a worker", "event", "lister.hinted", "spec_id", id)
			continue
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
		}
		l.Done(it)
		done(false)
	}
}

func orTimeAfter(f func(time.Duration) <-chan time.Time) func(time.Duration) <-chan time.Time {
	if f != nil {
		return f
	}
	return time.After
}

// send hands it to an idle worker: at once if one waits, else when one comes
// free within an interval (errBusy after that). A worker that finds the
// listing stale says so before it takes another item, so the stale check
// comes first and a blocked send wakes for it.
func (l *Lister) send(ctx context.Context, out chan<- Item, it Item) error {
	if l.stale.Load() {
		return errStale
	}
	select {
	case out <- it:
		return nil
	default:
	}
	busy := orTimeAfter(l.cfg.BusyAfter)(time.Duration(l.interval.Load()))
	select {
	case out <- it:
		return nil
	case <-l.staleAlarm:
		return errStale
	case <-ctx.Done():
		return ctx.Err()
	case <-busy:
		return errBusy
	}
}

// Stale tells the lister that it, an item it handed out, was already gone or
// claimed elsewhere. The page is shuffled, so one such key says little about
// the rest; once more than an eighth of the keys a listing handed out (and at
// least two) were, it is out of date and the lister lists afresh rather than
// hand out more keys other nodes have taken. Relisting sooner costs more than
// it saves: a LIST of a full page costs the server and this node as much as
// dozens of GETs of a gone key, and with many agents on one queue every
// listing loses a key to another node within a few items. An item of an older
// listing says nothing about the current one, which is newer.
func (l *Lister) Stale(it Item) {
	l.mu.Lock()
	current := it.pass == l.pass
	if current {
		l.bounced++
	}
	outOfDate := current && l.bounced >= 2 && 8*l.bounced > l.handed
	l.mu.Unlock()
	if !outOfDate {
		return
	}
	l.stale.Store(true)
	select {
	case l.staleAlarm <- struct{}{}:
	default:
	}
}

// Done marks an item a worker received as finished: its key may be handed
// out again.
func (l *Lister) Done(it Item) {
	l.mu.Lock()
	delete(l.inFlight, it.Key)
	l.mu.Unlock()
}

// Skip remembers that key was skipped (refused by the placement gate) at etag, so it is not handed out again
// while it is listed with the same ETag.
func (l *Lister) Skip(key, etag string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.skipped) < maxRemembered {
		l.skipped[key] = remembered{etag: etag, lastSeen: l.pass}
	}
}

// listOnce makes one full listing. It reports whether it handed out work (a key
// not handed out before at the same ETag) and how many items it handed out.
func (l *Lister) listOnce(ctx context.Context, out chan<- Item) (found bool, handedOut int, err error) {
	l.mu.Lock()
	l.pass++
	pass := l.pass
	l.handed, l.bounced = 0, 0
	l.mu.Unlock()
	l.stale.Store(false)
	select {
	case <-l.staleAlarm: // from the last listing
	default:
	}

	listed := 0
	err = l.cfg.List(ctx, func(page []Entry) error {
		listed += len(page)
		items, paused := l.candidates(page, pass)
		if paused {
			return errPaused
		}
		// Agents listing the same queue see the same order; shuffling the page
		// makes them collide on the same key far less often.
		l.cfg.Rand.Shuffle(len(items), func(i, j int) { items[i], items[j] = items[j], items[i] })
		for _, it := range items {
			l.mu.Lock()
			if l.inFlight[it.Key] {
				l.mu.Unlock()
				continue
			}
			// In flight and counted before the send: the worker may call Done
			// or Stale before the send returns here.
			l.inFlight[it.Key] = true
			l.handed++
			l.mu.Unlock()
			if err := l.send(ctx, out, it); err != nil {
				l.mu.Lock()
				delete(l.inFlight, it.Key)
				l.handed--
				l.mu.Unlock()
				return err
			}
			l.mu.Lock()
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
		}
		return nil
	})
	switch {
	case err == nil:
		l.forgetUnlisted(pass)
		l.cfg.Logger.Debug("listed pending", "event", "lister.listed", "keys", listed, "found_work", found, "handed_out", handedOut,
			"poll_ms", time.Duration(l.interval.Load()).Milliseconds())
	case errors.Is(err, errPaused):
		l.cfg.Logger.Debug("listed pending", "event", "lister.listed", "keys", listed, "paused", true)
	case errors.Is(err, errBusy):
		l.cfg.Logger.Debug("every worker busy for a poll interval; listing afresh", "event", "lister.relist", "keys", listed, "handed_out", handedOut)
	}
	return found, handedOut, err
}

// candidates filters a page down to the keys worth handing out, and reports
// whether the page holds the pause marker.
func (l *Lister) candidates(page []Entry, pass int) (items []Item, paused bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	items = make([]Item, 0, len(page))
	for _, e := range page {
		if l.cfg.PauseKey != "" && e.Key == l.cfg.PauseKey {
			return nil, true
		}
		id, err := l.cfg.ID(e.Key)
		if err != nil {
			if !l.ignored[e.Key] && len(l.ignored) < maxRemembered {
				l.ignored[e.Key] = true
				l.cfg.Logger.Warn("ignoring key under pending/: not work", "event", "lister.not_work", "key", e.Key, "reason", err.Error())
			}
			continue
		}
		if r, ok := l.skipped[e.Key]; ok {
			if r.etag == e.ETag {
				r.lastSeen = pass
				l.skipped[e.Key] = r
				continue
			}
			delete(l.skipped, e.Key) // the spec changed: look again
		}
		if t, ok := l.tried[e.Key]; ok {
			t.lastSeen = pass
			l.tried[e.Key] = t
		}
		if l.inFlight[e.Key] {
			continue
		}
		items = append(items, Item{Key: e.Key, ID: id, ETag: e.ETag, pass: pass})
	}
	return items, false
}

// forgetUnlisted drops the keys a complete listing no longer showed.
func (l *Lister) forgetUnlisted(pass int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range []map[string]remembered{l.skipped, l.tried} {
		for k, r := range m {
			if r.lastSeen < pass {
				delete(m, k)
			}
		}
	}
}
