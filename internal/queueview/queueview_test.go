package queueview

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/s3mem"
	"github.com/cellos/fleetd/internal/store"
)

// countingStore counts the requests the read model makes of the in-memory
// store: each page of a listing is one LIST.
type countingStore struct {
	*s3mem.Store
	pages, gets, heads atomic.Int64
}

func (c *countingStore) List(ctx context.Context, prefix string, fn func(store.Page) error) error {
	return c.Store.List(ctx, prefix, func(p store.Page) error {
		c.pages.Add(1)
		return fn(p)
	})
}

func (c *countingStore) Get(ctx context.Context, key string, limit int64) (store.Object, error) {
	c.gets.Add(1)
	return c.Store.Get(ctx, key, limit)
}

func (c *countingStore) Head(ctx context.Context, key string) (store.Object, error) {
	c.heads.Add(1)
	return c.Store.Head(ctx, key)
}

var layout = store.NewLayout("fleet", "")

func setup(t *testing.T, pageSize int) *countingStore {
	t.Helper()
	return &countingStore{Store: s3mem.New(s3mem.Quirks{PageSize: pageSize})}
}

func (c *countingStore) put(key string, body string, meta map[string]string, age time.Duration) {
	c.PutAt(key, []byte(body), meta, time.Now().Add(-age))
}

func lease(node string, attempts int) string {
	return fmt.Sprintf(`{"node":%q,"state":"running","attempts":%d,"ttl_ms":60000,"token":"t","nonce":"n"}`, node, attempts)
}

// TestListBounds: a count stops at its limit, is exact when the state holds
// exactly the limit, says "at least" only when there are more, and lists no
// page past the one holding the first key beyond the limit.
func TestListBounds(t *testing.T) {
	for _, tt := range []struct {
		name        string
		keys, limit int
		wantN       int
		wantAtLeast bool
		wantPages   int64
	}{
		{"under the limit", 4, 5, 4, false, 2},
		{"exactly the limit", 5, 5, 5, false, 2},
		{"one past the limit", 6, 5, 5, true, 3},
		{"far past the limit", 40, 5, 5, true, 3},
		{"empty", 0, 5, 0, false, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			storage := setup(t, 3)
			for i := range tt.keys {
				storage.put(layout.Key(store.Completed, "s"+strconv.Itoa(i)), "{}", nil, time.Minute)
			}
			storage.put("fleet/completed/notes.txt", "", nil, time.Hour) // not work
			l, err := List(context.Background(), storage, layout, store.Completed, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			c := l.Count()
			if c.N != tt.wantN || c.AtLeast != tt.wantAtLeast || c.State != "completed" {
				t.Errorf("count = %+v, want %d (at least: %v)", c, tt.wantN, tt.wantAtLeast)
			}
			if got := storage.pages.Load(); got != tt.wantPages {
				t.Errorf("listed %d pages, want %d", got, tt.wantPages)
			}
		})
	}
}

// TestListPendingShowsPauseAndDelayed: the pending listing finds the pause
// marker and the delayed specs, which are not counted as pending.
func TestListPendingShowsPauseAndDelayed(t *testing.T) {
	storage := setup(t, 0)
	due := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	storage.put(layout.DelayedKey("later", due), "{}", nil, 0)
	storage.put(layout.PauseKey(), `{"by":"ops"}`, nil, 0)
	storage.put(layout.Key(store.Pending, "old"), "{}", nil, 90*time.Second)
	storage.put(layout.Key(store.Pending, "new"), "{}", nil, 10*time.Second)
	l, err := List(context.Background(), storage, layout, store.Pending, 10)
	if err != nil {
		t.Fatal(err)
	}
	if !l.Paused || len(l.Objects) != 2 || len(l.Delayed) != 1 || l.Delayed[0].ID != "later" || !l.Delayed[0].Due.Equal(due) {
		t.Errorf("pending = %d objects, paused %v, delayed %+v", len(l.Objects), l.Paused, l.Delayed)
	}
	if o := l.Oldest(); o < 89*time.Second || o > 2*time.Minute {
		t.Errorf("oldest pending = %s, want about 90s", o)
	}
}

func fixture(t *testing.T) *countingStore {
	storage := setup(t, 0)
	storage.put(layout.Key(store.Pending, "p1"), "{}", nil, 30*time.Second)
	storage.put(layout.Key(store.Claimed, "run-a"), "{}", nil, 20*time.Second)
	storage.put(layout.Key(store.Leases, "run-a"), lease("node-a", 2), nil, 2*time.Second)
	storage.put(layout.Key(store.Claimed, "orphan"), "{}", nil, 10*time.Minute)
	storage.put(layout.Key(store.Leases, "garbled"), "not json", nil, time.Second)
	storage.put(layout.Key(store.Completed, "c1"), "{}", map[string]string{"fleetd-outcome": "completed", "fleetd-node": "node-c"}, 5*time.Second)
	storage.put(layout.Key(store.Failed, "f1"), "{}", map[string]string{"fleetd-outcome": "failed", "fleetd-node": "node-a", "fleetd-reason": "supervisor exit 3"}, time.Minute)
	return storage
}

// TestSnapshotWithoutResultsMakesNoHeads: what status reads costs one
// listing of each state and a GET of each lease, and nothing else.
func TestSnapshotWithoutResultsMakesNoHeads(t *testing.T) {
	storage := fixture(t)
	s, err := NewReader(storage, layout, time.Minute, Limits{}).Snapshot(context.Background(), Parts{})
	if err != nil || len(s.Problems) > 0 {
		t.Fatal(err, s.Problems)
	}
	want := []Count{{"pending", 1, false}, {"claimed", 2, false}, {"completed", 1, false}, {"failed", 1, false}}
	if fmt.Sprint(s.Counts) != fmt.Sprint(want) {
		t.Errorf("counts = %v, want %v", s.Counts, want)
	}
	if storage.pages.Load() != 5 || storage.gets.Load() != 2 || storage.heads.Load() != 0 {
		t.Errorf("requests: %d LIST, %d GET, %d HEAD; want 5, 2, 0", storage.pages.Load(), storage.gets.Load(), storage.heads.Load())
	}
	got := map[string]Flight{}
	for _, f := range s.InFlight {
		got[f.ID] = f
	}
	if f := got["run-a"]; f.Node != "node-a" || f.Attempt != 2 || f.State != "running" || !f.HasClaim || f.Stale {
		t.Errorf("run-a = %+v", f)
	}
	if f := got["orphan"]; f.State != NoLease || !f.Stale {
		t.Errorf("orphan = %+v, want a stale claim with no lease", f)
	}
	if f := got["garbled"]; f.State != Unreadable || f.HasClaim {
		t.Errorf("garbled = %+v, want an unreadable lease", f)
	}
	if len(s.Failures) != 0 || len(s.Nodes) != 0 {
		t.Errorf("results read without Parts.Results: %+v %+v", s.Failures, s.Nodes)
	}
}

// TestSnapshotReadsEachVersionOnce: the latest results and the leases are
// read once per version; a second snapshot only lists.
func TestSnapshotReadsEachVersionOnce(t *testing.T) {
	storage := fixture(t)
	r := NewReader(storage, layout, time.Minute, Limits{})
	s, err := r.Snapshot(context.Background(), Parts{Results: true, Sessions: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Failures) != 1 || s.Failures[0].Reason != "supervisor exit 3" {
		t.Errorf("failures = %+v", s.Failures)
	}
	if len(s.Nodes) != 2 || s.Nodes[0].Name != "node-a" || s.Nodes[1].Last == nil || s.Nodes[1].Last.ID != "c1" {
		t.Errorf("nodes = %+v", s.Nodes)
	}
	if storage.heads.Load() != 2 || storage.gets.Load() != 2 {
		t.Errorf("first snapshot: %d HEAD, %d GET; want 2, 2", storage.heads.Load(), storage.gets.Load())
	}
	storage.heads.Store(0)
	storage.gets.Store(0)
	if _, err := r.Snapshot(context.Background(), Parts{Results: true, Sessions: true}); err != nil {
		t.Fatal(err)
	}
	if storage.heads.Load() != 0 || storage.gets.Load() != 0 {
		t.Errorf("second snapshot: %d HEAD, %d GET; want none", storage.heads.Load(), storage.gets.Load())
	}
}

// TestSnapshotBounds: each limit holds, and a count that stopped at one
// says so.
func TestSnapshotBounds(t *testing.T) {
	storage := setup(t, 0)
	for i := range 5 {
		id := "s" + strconv.Itoa(i)
		storage.put(layout.Key(store.Failed, id), "{}", map[string]string{"fleetd-node": "n"}, time.Minute)
		storage.put(layout.Key(store.Leases, id), lease("n", 1), nil, time.Second)
	}
	s, err := NewReader(storage, layout, time.Minute, Limits{Keys: 4, Results: 2, Leases: 3}).Snapshot(context.Background(), Parts{Results: true})
	if err != nil {
		t.Fatal(err)
	}
	if c := s.Counts[3]; c.State != "failed" || c.N != 4 || !c.AtLeast {
		t.Errorf("failed = %+v, want at least 4", c)
	}
	if len(s.Failures) != 2 || storage.heads.Load() != 2 {
		t.Errorf("%d failures read with %d HEADs, want 2", len(s.Failures), storage.heads.Load())
	}
	if len(s.InFlight) != 3 || storage.gets.Load() != 3 {
		t.Errorf("%d in flight read with %d GETs, want 3 (the lease limit)", len(s.InFlight), storage.gets.Load())
	}
}

// TestDepth: an autoscaler's depth is bounded by the key limit (pending/)
// and the lease limit (leases/), and marked when either stopped.
func TestDepth(t *testing.T) {
	storage := setup(t, 0)
	for i := range 4 {
		storage.put(layout.Key(store.Pending, "p"+strconv.Itoa(i)), "{}", nil, time.Duration(i)*time.Minute)
	}
	storage.put(layout.Key(store.Leases, "r"), lease("n", 1), nil, 0)
	for _, tt := range []struct {
		lim                  Limits
		pending, running     int
		atLeast              bool
		minOldest, maxOldest float64
	}{
		{Limits{}, 4, 1, false, 179, 200},
		{Limits{Keys: 4, Leases: 1}, 4, 1, false, 179, 200},
		{Limits{Keys: 2}, 2, 1, true, 0, 200},
		{Limits{Leases: 1, Keys: 10}, 4, 1, false, 179, 200},
	} {
		d, err := Depth(context.Background(), storage, layout, "", tt.lim)
		if err != nil {
			t.Fatal(err)
		}
		if d.Pending != tt.pending || d.Running != tt.running || d.AtLeast != tt.atLeast || d.Source != "listing" ||
			d.OldestPendingSeconds < tt.minOldest || d.OldestPendingSeconds > tt.maxOldest {
			t.Errorf("Depth(%+v) = %+v", tt.lim, d)
		}
	}
	if storage.gets.Load() != 0 {
		t.Errorf("depth read %d leases, want none (it only lists)", storage.gets.Load())
	}
}
