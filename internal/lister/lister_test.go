package lister

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
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

func id(key string) (string, bool) {
	name, ok := strings.CutPrefix(key, "pending/")
	if !ok || strings.Contains(name, "/") || !strings.HasSuffix(name, ".json") {
		return "", false
	}
	name = strings.TrimSuffix(name, ".json")
	return name, name != ""
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
		_, _ = l.listOnce(ctx, func(it Item) { got <- it })
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
		if _, err := l.listOnce(context.Background(), func(it Item) { ids = append(ids, it.ID) }); err != nil {
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
	_, _ = l.listOnce(context.Background(), func(Item) { t.Fatal("rejected key handed out") })
	q.set()
	_, _ = l.listOnce(context.Background(), func(Item) {})
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
	_, err := l.listOnce(context.Background(), func(it Item) {
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
