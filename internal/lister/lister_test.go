package lister

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeQueue serves a fixed listing in pages of two.
type fakeQueue struct {
	mu      sync.Mutex
	entries []Entry
	lists   int
	before  func(n int) // if set, called before the nth listing (from 1)
}

func (f *fakeQueue) list(ctx context.Context, fn func([]Entry) error) error {
	f.mu.Lock()
	f.lists++
	n, before := f.lists, f.before
	f.mu.Unlock()
	if before != nil {
		before(n)
	}
	f.mu.Lock()
	entries := append([]Entry(nil), f.entries...)
	f.mu.Unlock()
	for i := 0; i < len(entries); i += 2 {
		if err := fn(entries[i:min(i+2, len(entries))]); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeQueue) set(entries ...Entry) {
	f.mu.Lock()
	f.entries = entries
	f.mu.Unlock()
}

var errNotWork = errors.New("not work")

func id(key string) (string, error) {
	name, ok := strings.CutPrefix(key, "pending/")
	if !ok || strings.Contains(name, "/") || !strings.HasSuffix(name, ".json") || name == ".json" {
		return "", errNotWork
	}
	return strings.TrimSuffix(name, ".json"), nil
}

func newLister(q *fakeQueue) *Lister {
	return New(Config{
		List:     q.list,
		ID:       id,
		Interval: time.Hour, // only explicit listings in these tests
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
}

// collect makes one listing with a worker always ready, which never calls
// Done, and returns the ids handed out.
func collect(t *testing.T, l *Lister) []string {
	t.Helper()
	out := make(chan Item)
	got := make(chan []string)
	go func() {
		var ids []string
		for it := range out {
			ids = append(ids, it.ID)
		}
		got <- ids
	}()
	_, _, err := l.listOnce(context.Background(), out)
	close(out)
	ids := <-got
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestListOnceHandsOutOnlyToIdleWorkers(t *testing.T) {
	t.Parallel()
	q := &fakeQueue{}
	q.set(Entry{"pending/a.json", "1"}, Entry{"pending/b.json", "1"}, Entry{"pending/c.json", "1"})
	l := newLister(q)
	out := make(chan Item)
	got := make(chan Item, 3)
	release := make(chan struct{})
	for range 2 { // two workers, each holding its item until released
		go func() {
			for it := range out {
				got <- it
				<-release
				l.Done(it)
			}
		}()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _, _ = l.listOnce(ctx, out)
	}()
	first, second := <-got, <-got
	select {
	case it := <-got:
		t.Fatalf("third item %v handed out with both workers busy", it)
	case <-time.After(50 * time.Millisecond):
		// Proving a negative: give the lister time to misbehave.
	}
	release <- struct{}{}
	third := <-got
	<-done
	close(out)
	close(release)
	seen := map[string]bool{first.ID: true, second.ID: true, third.ID: true}
	if len(seen) != 3 {
		t.Fatalf("handed out %v %v %v, want a, b, c once each", first, second, third)
	}
}

func TestListOnceSkips(t *testing.T) {
	t.Parallel()
	q := &fakeQueue{}
	l := newLister(q)
	q.set(Entry{"pending/a.json", "1"}, Entry{"pending/sub/b.json", "1"}, Entry{"pending/c.txt", "1"}, Entry{"pending/.json", "1"})
	if got := collect(t, l); len(got) != 1 || got[0] != "a" {
		t.Fatalf("first listing handed out %v, want [a]", got)
	}
	if got := collect(t, l); len(got) != 0 {
		t.Fatalf("a is in flight, yet handed out %v", got)
	}
	l.Done(Item{Key: "pending/a.json"})
	l.Skip("pending/a.json", "1")
	if got := collect(t, l); len(got) != 0 {
		t.Fatalf("skipped a at the same ETag, yet handed out %v", got)
	}
	q.set(Entry{"pending/a.json", "2"})
	if got := collect(t, l); len(got) != 1 || got[0] != "a" {
		t.Fatalf("a changed ETag: handed out %v, want [a]", got)
	}
	if len(l.ignored) != 3 {
		t.Errorf("ignored keys = %v, want the 3 non-work keys", l.ignored)
	}
}

func TestSkipsForgottenWhenKeyGoes(t *testing.T) {
	t.Parallel()
	q := &fakeQueue{}
	l := newLister(q)
	l.Skip("pending/a.json", "1")
	q.set(Entry{"pending/a.json", "1"})
	if got := collect(t, l); len(got) != 0 {
		t.Fatalf("skipped key handed out: %v", got)
	}
	q.set()
	collect(t, l)
	if len(l.skipped) != 0 {
		t.Fatalf("skipped = %v after the key left the listing, want empty", l.skipped)
	}
}

// listBouncing makes one listing of n keys with one worker that calls Stale
// on the items whose place in the hand-out order bounce says, Done on the
// others, and stops taking items after stopAfter. It returns how many items
// the worker took and listOnce's error.
func listBouncing(t *testing.T, n, stopAfter int, bounce func(i int) bool) (int, error) {
	t.Helper()
	q := &fakeQueue{}
	var entries []Entry
	for i := range n {
		entries = append(entries, Entry{fmt.Sprintf("pending/%02d.json", i), "1"})
	}
	q.set(entries...)
	l := newLister(q)
	out := make(chan Item)
	listed := make(chan struct{})
	took := make(chan int, 1)
	go func() {
		i := 0
		for ; i < stopAfter; i++ {
			var it Item
			select {
			case it = <-out:
			case <-listed:
				took <- i
				return
			}
			if bounce(i) {
				l.Stale(it)
			} else {
				l.Done(it)
			}
		}
		took <- i
	}()
	// A lister that never gives up the listing blocks on the idle worker:
	// the deadline ends it, and the test fails on the error.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err := l.listOnce(ctx, out)
	close(listed)
	return <-took, err
}

func TestStaleListingIsAbandoned(t *testing.T) {
	t.Parallel()
	// Two keys bounce in a row: the listing is out of date after the second.
	// The worker would take every key; the lister must stop handing them out.
	took, err := listBouncing(t, 10, 2, func(int) bool { return true })
	if !errors.Is(err, errStale) || took != 2 {
		t.Fatalf("listOnce = %v after %d items; want errStale after 2", err, took)
	}
}

func TestFewBouncesKeepTheListing(t *testing.T) {
	t.Parallel()
	// The first and the last bounce: 2 of 20, never more than an eighth, so
	// the whole listing is handed out.
	took, err := listBouncing(t, 20, 20, func(i int) bool { return i == 0 || i == 19 })
	if err != nil || took != 20 {
		t.Fatalf("listOnce = %v after %d of 20 items; want the whole listing handed out", err, took)
	}
	// The first bounces, twelve do not, then the fourteenth: 2 of 14, more
	// than an eighth, so the listing is abandoned there.
	took, err = listBouncing(t, 20, 14, func(i int) bool { return i == 0 || i == 13 })
	if !errors.Is(err, errStale) || took != 14 {
		t.Fatalf("listOnce = %v after %d items; want errStale after the fourteenth", err, took)
	}
}

// runWatched runs a lister whose timer between listings is the test's: each
// wait for the interval is reported on waits and ends when the test sends on
// fire. hot is closed if the lister lists 20 times without waiting.
type runWatched struct {
	l       *Lister
	q       *fakeQueue
	waits   chan int // the number of listings so far, at each wait
	fire    chan time.Time
	hot     chan struct{}
	bounced atomic.Int32
}

// startWatched starts the lister and n workers that pass each item to handle,
// which must call Done. busyAfter, if set, is the lister's BusyAfter.
func startWatched(t *testing.T, q *fakeQueue, n int, handle func(*Lister, Item), busyAfter func(time.Duration) <-chan time.Time) *runWatched {
	t.Helper()
	w := &runWatched{q: q, waits: make(chan int), fire: make(chan time.Time), hot: make(chan struct{})}
	var hotOnce sync.Once
	sinceWait := 0
	// A test that ends early (a failed check) cancels ctx: the lister's
	// waits then stop asking for the test's attention, so the cleanup ends
	// instead of hanging.
	ctx, cancel := context.WithCancel(context.Background())
	w.l = New(Config{
		List: func(ctx context.Context, fn func([]Entry) error) error {
			if sinceWait++; sinceWait == 20 {
				hotOnce.Do(func() { close(w.hot) })
			}
			return q.list(ctx, fn)
		},
		ID:       id,
		Interval: time.Hour,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Bounced:  func() { w.bounced.Add(1) },
		After: func(time.Duration) <-chan time.Time {
			sinceWait = 0
			select {
			case w.waits <- q.listings():
			case <-ctx.Done():
			}
			return w.fire
		},
		BusyAfter: busyAfter,
	})
	out := make(chan Item)
	var workers sync.WaitGroup
	for range n {
		workers.Go(func() {
			for it := range out {
				handle(w.l, it)
			}
		})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.l.Run(ctx, out)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		close(out)
		workers.Wait()
	})
	return w
}

func (f *fakeQueue) listings() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lists
}

// nextWait returns the number of listings made when the lister next waits
// for its interval, failing if it relists in a loop instead.
func (w *runWatched) nextWait(t *testing.T) int {
	t.Helper()
	select {
	case n := <-w.waits:
		return n
	case <-w.hot:
		t.Fatal("lister relisted 20 times without waiting for the interval")
	case <-time.After(10 * time.Second):
		t.Fatal("lister neither listed nor waited within 10s")
	}
	return 0
}

func TestBouncedListingsWaitForInterval(t *testing.T) {
	t.Parallel()
	// More keys that bounce than workers: claimed elsewhere (the worker
	// says Stale) or unreadable (the worker just finishes with it).
	for _, stale := range []bool{true, false} {
		t.Run(map[bool]string{true: "claimed elsewhere", false: "unreadable"}[stale], func(t *testing.T) {
			t.Parallel()
			q := &fakeQueue{}
			q.set(Entry{"pending/a.json", "1"}, Entry{"pending/b.json", "1"}, Entry{"pending/c.json", "1"})
			w := startWatched(t, q, 2, func(l *Lister, it Item) {
				if stale {
					l.Stale(it)
				}
				l.Done(it)
			}, nil)
			// Each key is new once (the listing after it comes at once);
			// every other listing is followed by a wait.
			waits, lists := 1, w.nextWait(t)
			for ; waits < 6; waits++ {
				w.fire <- time.Now()
				lists = w.nextWait(t)
			}
			if lists > waits+3 {
				t.Errorf("%d listings for %d waits, want at most one more per key", lists, waits)
			}
			if got := int(w.bounced.Load()); got != waits {
				t.Errorf("Bounced called %d times, want once per wait (%d)", got, waits)
			}
		})
	}
}

func TestListingWithWorkRelistsAtOnce(t *testing.T) {
	t.Parallel()
	q := &fakeQueue{}
	q.set(Entry{"pending/k1.json", "1"})
	// Each spec, once taken, leaves pending/ and a new one is submitted, so
	// every listing finds exactly one new key, five times. A listing waits
	// for the worker to have handled the last key, as S3 would show it.
	handled := make(chan struct{}, 5)
	q.before = func(n int) {
		if n > 1 && n <= 6 {
			<-handled
		}
	}
	w := startWatched(t, q, 1, func(l *Lister, it Item) {
		n := int(it.ID[1] - '0')
		if n < 5 {
			q.set(Entry{fmt.Sprintf("pending/k%d.json", n+1), "1"})
		} else {
			q.set()
		}
		l.Done(it)
		handled <- struct{}{}
	}, nil)
	if n := w.nextWait(t); n != 6 {
		t.Errorf("first wait after %d listings, want 6: five with work, then an empty one", n)
	}
	if got := w.bounced.Load(); got != 0 {
		t.Errorf("Bounced called %d times, want 0", got)
	}
}

// TestBusyListerKeepsPolling: with every worker held by a long cell, the
// lister lists afresh once an interval instead of waiting on an old listing
// for a worker, and counts that as neither work nor bounced.
func TestBusyListerKeepsPolling(t *testing.T) {
	t.Parallel()
	q := &fakeQueue{}
	q.set(Entry{"pending/a.json", "1"}, Entry{"pending/b.json", "1"}, Entry{"pending/c.json", "1"})
	got := make(chan Item, 100) // a worker never blocks on it, even if the test has ended
	release := make(chan struct{})
	// The busy timer is the test's. It may also start while the worker is
	// only on its way back to the channel, so its starts are recorded, not
	// waited for; busy ends when the test sends on busyFire.
	busyStarts := make(chan int, 100)
	busyFire := make(chan time.Time)
	w := startWatched(t, q, 1, func(l *Lister, it Item) { // holds its item until released
		got <- it
		<-release
		l.Done(it)
	}, func(time.Duration) <-chan time.Time {
		busyStarts <- q.listings()
		return busyFire
	})
	t.Cleanup(func() { close(release) }) // before the lister's cleanup waits for the worker
	// nextBusy returns when the lister waits for the worker in listing n.
	nextBusy := func(n int) {
		t.Helper()
		for {
			select {
			case got := <-busyStarts:
				if got > n {
					t.Fatalf("listing %d while waiting for listing %d to be busy", got, n)
				}
				if got == n {
					return
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("listing %d did not wait for a busy worker within 10s", n)
			}
		}
	}
	first := <-got
	lists := 1
	nextBusy(lists)
	for range 4 {
		busyFire <- time.Now() // received only by a lister waiting on it
		lists++
		nextBusy(lists)
	}
	if n := len(got); n != 0 {
		t.Fatalf("%d items handed out with the only worker busy", n)
	}
	if b := w.bounced.Load(); b != 0 {
		t.Errorf("Bounced called %d times at capacity, want 0", b)
	}
	// The worker frees while the lister waits for it: the next key goes at once.
	release <- struct{}{}
	select {
	case it := <-got:
		if it.Key == first.Key {
			t.Errorf("handed out %v again", it)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no item handed out within 10s of the worker freeing")
	}
}

func TestPauseMarkerHoldsBackEveryKey(t *testing.T) {
	t.Parallel()
	q := &fakeQueue{}
	q.set(Entry{"pending/!paused", "p"}, Entry{"pending/a.json", "1"}, Entry{"pending/b.json", "1"})
	l := New(Config{List: q.list, ID: id, Interval: time.Hour, PauseKey: "pending/!paused", Logger: slog.New(slog.DiscardHandler)})
	out := make(chan Item)
	_, handed, err := l.listOnce(context.Background(), out)
	if !errors.Is(err, errPaused) || handed != 0 {
		t.Errorf("paused listing: handed out %d, err %v; want none, errPaused", handed, err)
	}
	q.set(Entry{"pending/a.json", "1"})
	if got := collect(t, l); len(got) != 1 {
		t.Errorf("after resume: %v, want a", got)
	}
}

// TestIdleCadenceIsOneListingPerInterval: a wait whose jitter ended it early
// must not be followed by another listing at once (it was: about twice the
// LISTs an idle agent should make).
func TestIdleCadenceIsOneListingPerInterval(t *testing.T) {
	t.Parallel()
	q := &fakeQueue{}
	var mu sync.Mutex
	var waits []time.Duration
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := New(Config{List: q.list, ID: id, Interval: time.Second, Logger: slog.New(slog.DiscardHandler),
		After: func(d time.Duration) <-chan time.Time {
			mu.Lock()
			waits = append(waits, d)
			n := len(waits)
			mu.Unlock()
			if n == 20 {
				cancel()
			}
			ch := make(chan time.Time, 1)
			ch <- time.Now() // fire at once: the lister must still ask for about an interval each time
			return ch
		}})
	l.Run(ctx, make(chan Item))
	mu.Lock()
	defer mu.Unlock()
	for i, d := range waits[1:] {
		// Each tick is an interval after the last (±5 % jitter); the clock did
		// not move, so every wait asks for about one more interval.
		if want := time.Duration(i+2) * time.Second; d < want-100*time.Millisecond {
			t.Fatalf("wait %d asked for %v, want about %v: the cadence did not advance", i+1, d, want)
		}
	}
}
