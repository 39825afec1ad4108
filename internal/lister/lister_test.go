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
}

func (f *fakeQueue) list(ctx context.Context, fn func([]Entry) error) error {
	f.mu.Lock()
	entries := append([]Entry(nil), f.entries...)
	f.lists++
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

func newLister(q *fakeQueue, slots int) *Lister {
	return New(Config{
		List:     q.list,
		ID:       id,
		Slots:    slots,
		Interval: time.Hour, // only explicit listings in these tests
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
}

func TestListOnceNeverExceedsSlots(t *testing.T) {
	t.Parallel()
	q := &fakeQueue{}
	q.set(Entry{"pending/a.json", "1"}, Entry{"pending/b.json", "1"}, Entry{"pending/c.json", "1"})
	l := newLister(q, 2)
	got := make(chan Item, 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _, _ = l.listOnce(ctx, func(it Item) { got <- it })
	}()
	first, second := <-got, <-got
	select {
	case it := <-got:
		t.Fatalf("third item %v handed out with both slots taken", it)
	case <-time.After(50 * time.Millisecond):
		// Proving a negative: give the lister time to misbehave.
	}
	if l.InFlight() != 2 {
		t.Fatalf("InFlight = %d, want 2", l.InFlight())
	}
	l.Done(first)
	third := <-got
	<-done
	seen := map[string]bool{first.ID: true, second.ID: true, third.ID: true}
	if len(seen) != 3 {
		t.Fatalf("handed out %v %v %v, want a, b, c once each", first, second, third)
	}
}

func TestListOnceSkips(t *testing.T) {
	t.Parallel()
	q := &fakeQueue{}
	l := newLister(q, 10)
	collect := func() []string {
		var ids []string
		if _, _, err := l.listOnce(context.Background(), func(it Item) { ids = append(ids, it.ID) }); err != nil {
			t.Fatal(err)
		}
		return ids
	}
	q.set(Entry{"pending/a.json", "1"}, Entry{"pending/sub/b.json", "1"}, Entry{"pending/c.txt", "1"}, Entry{"pending/.json", "1"})
	if got := collect(); len(got) != 1 || got[0] != "a" {
		t.Fatalf("first listing handed out %v, want [a]", got)
	}
	if got := collect(); len(got) != 0 {
		t.Fatalf("a is in flight, yet handed out %v", got)
	}
	l.Done(Item{Key: "pending/a.json"})
	l.Reject("pending/a.json", "1")
	if got := collect(); len(got) != 0 {
		t.Fatalf("rejected a at the same ETag, yet handed out %v", got)
	}
	q.set(Entry{"pending/a.json", "2"})
	if got := collect(); len(got) != 1 || got[0] != "a" {
		t.Fatalf("a changed ETag: handed out %v, want [a]", got)
	}
	if len(l.ignored) != 3 {
		t.Errorf("ignored keys = %v, want the 3 non-work keys", l.ignored)
	}
}

func TestRejectionsForgottenWhenKeyGoes(t *testing.T) {
	t.Parallel()
	q := &fakeQueue{}
	l := newLister(q, 10)
	l.Reject("pending/a.json", "1")
	q.set(Entry{"pending/a.json", "1"})
	_, _, _ = l.listOnce(context.Background(), func(Item) { t.Fatal("rejected key handed out") })
	q.set()
	_, _, _ = l.listOnce(context.Background(), func(Item) {})
	if len(l.rejected) != 0 {
		t.Fatalf("rejected = %v after the key left the listing, want empty", l.rejected)
	}
}

func TestStaleListingIsAbandoned(t *testing.T) {
	t.Parallel()
	q := &fakeQueue{}
	q.set(Entry{"pending/a.json", "1"}, Entry{"pending/b.json", "1"}, Entry{"pending/c.json", "1"})
	l := newLister(q, 10)
	var got []Item
	_, _, err := l.listOnce(context.Background(), func(it Item) {
		got = append(got, it)
		l.Stale() // the worker found this key gone
	})
	if !errors.Is(err, errStale) || len(got) != 1 {
		t.Fatalf("listOnce = %v after handing out %v; want errStale after one item", err, got)
	}
	if l.InFlight() != 1 {
		t.Errorf("InFlight = %d, want only the item handed out", l.InFlight())
	}
}

// runWatched runs a lister whose timer is the test's: each wait for the
// interval is reported on waits and ends when the test sends on fire. hot is
// closed if the lister lists 20 times without waiting.
type runWatched struct {
	l       *Lister
	q       *fakeQueue
	waits   chan int // the number of listings so far, at each wait
	fire    chan time.Time
	hot     chan struct{}
	bounced atomic.Int32
}

func startWatched(t *testing.T, q *fakeQueue, slots int, dispatch func(*Lister, Item)) *runWatched {
	t.Helper()
	w := &runWatched{q: q, waits: make(chan int), fire: make(chan time.Time), hot: make(chan struct{})}
	var hotOnce sync.Once
	sinceWait := 0
	w.l = New(Config{
		List: func(ctx context.Context, fn func([]Entry) error) error {
			if sinceWait++; sinceWait == 20 {
				hotOnce.Do(func() { close(w.hot) })
			}
			return q.list(ctx, fn)
		},
		ID:       id,
		Slots:    slots,
		Interval: time.Hour,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Bounced:  func() { w.bounced.Add(1) },
		After: func(time.Duration) <-chan time.Time {
			sinceWait = 0
			q.mu.Lock()
			n := q.lists
			q.mu.Unlock()
			w.waits <- n
			return w.fire
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.l.Run(ctx, func(it Item) { dispatch(w.l, it) })
	}()
	t.Cleanup(func() { cancel(); <-done })
	return w
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
	// More keys that bounce than free slots: claimed elsewhere (the worker
	// says Stale) or unreadable (the worker just gives the slot back).
	for _, stale := range []bool{true, false} {
		t.Run(map[bool]string{true: "claimed elsewhere", false: "unreadable"}[stale], func(t *testing.T) {
			t.Parallel()
			q := &fakeQueue{}
			q.set(Entry{"pending/a.json", "1"}, Entry{"pending/b.json", "1"}, Entry{"pending/c.json", "1"})
			w := startWatched(t, q, 2, func(l *Lister, it Item) {
				if stale {
					l.Stale()
				}
				l.Done(it)
			})
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
	// every listing finds exactly one new key, five times.
	w := startWatched(t, q, 1, func(l *Lister, it Item) {
		n := int(it.ID[1] - '0')
		if n < 5 {
			q.set(Entry{fmt.Sprintf("pending/k%d.json", n+1), "1"})
		} else {
			q.set()
		}
		l.Done(it)
	})
	if n := w.nextWait(t); n != 6 {
		t.Errorf("first wait after %d listings, want 6: five with work, then an empty one", n)
	}
	if got := w.bounced.Load(); got != 0 {
		t.Errorf("Bounced called %d times, want 0", got)
	}
}

// TestBusyListerKeepsPolling: with every slot held by a long cell, the lister
// lists afresh once an interval instead of waiting on an old listing for a
// slot, and counts that as neither work nor bounced.
func TestBusyListerKeepsPolling(t *testing.T) {
	t.Parallel()
	q := &fakeQueue{}
	q.set(Entry{"pending/a.json", "1"}, Entry{"pending/b.json", "1"}, Entry{"pending/c.json", "1"})
	got := make(chan Item, 3)
	w := startWatched(t, q, 1, func(_ *Lister, it Item) { got <- it }) // holds its slot
	first := <-got
	lists := w.nextWait(t)
	for range 4 {
		w.fire <- time.Now()
		if n := w.nextWait(t); n != lists+1 {
			t.Fatalf("%d listings after an interval at capacity, want %d: one per interval", n, lists+1)
		}
		lists++
	}
	if n := len(got); n != 0 {
		t.Fatalf("%d items handed out with the only slot held", n)
	}
	if b := w.bounced.Load(); b != 0 {
		t.Errorf("Bounced called %d times at capacity, want 0", b)
	}
	// The slot frees while the lister waits for it: the next key goes at once.
	w.l.Done(first)
	select {
	case it := <-got:
		if it.Key == first.Key {
			t.Errorf("handed out %v again", it)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no item handed out within 10s of a slot freeing")
	}
	w.nextWait(t) // at capacity again: waiting for a slot, as cleanup expects
}
