package ui

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/s3mem"
	"github.com/cellos/fleetd/internal/store"
)

// The chart's bars, checked against a model: a bar holds the results whose
// time is in [its start, its start + its step).
func TestHistoryBuckets(t *testing.T) {
	storage := &countingStore{Store: s3mem.New(s3mem.Quirks{})}
	ages := map[string][]time.Duration{
		"completed": {10 * time.Second, 40 * time.Second, 70 * time.Second, 5 * time.Minute, 59 * time.Minute, 2 * time.Hour, 23 * time.Hour, 25 * time.Hour},
		"failed":    {15 * time.Second, 3 * time.Minute, 90 * time.Minute, 30 * time.Hour},
	}
	for st, as := range ages {
		for i, a := range as {
			storage.put(fmt.Sprintf("fleet/%s/%s-%d.json", st, st, i), object{body: []byte(`{}`), age: a})
		}
	}
	storage.put("fleet/completed/notes.txt", object{age: time.Second}) // not a result
	h := &history{store: storage, layout: store.NewLayout("fleet", ""), limit: 1000, every: time.Minute, now: time.Now}
	hist, err := h.get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if hist.Listed != 12 || hist.AtLeast {
		t.Errorf("listed %d (at least %v), want 12", hist.Listed, hist.AtLeast)
	}
	times := map[bool][]time.Time{}
	for _, o := range storage.Snapshot("fleet/") {
		if strings.HasSuffix(o.Key, ".json") {
			times[strings.Contains(o.Key, "/failed/")] = append(times[strings.Contains(o.Key, "/failed/")], o.LastModified)
		}
	}
	model := func(start time.Time, step time.Duration, failed bool) int {
		n := 0
		for _, t := range times[failed] {
			if !t.Before(start) && t.Before(start.Add(step)) {
				n++
			}
		}
		return n
	}
	check := func(name string, bs []Bucket, step time.Duration) {
		for i, b := range bs {
			if i > 0 && !b.Start.Equal(bs[i-1].Start.Add(step)) {
				t.Fatalf("%s: bar %d starts %v, after %v", name, i, b.Start, bs[i-1].Start)
			}
			if c, f := model(b.Start, step, false), model(b.Start, step, true); b.Completed != c || b.Failed != f {
				t.Errorf("%s bar %d (%v): %d completed, %d failed; want %d, %d", name, i, b.Start, b.Completed, b.Failed, c, f)
			}
		}
		if last := bs[len(bs)-1]; hist.At.Before(last.Start) || !hist.At.Before(last.Start.Add(step)) {
			t.Errorf("%s: the last bar [%v, +%v) does not hold the listing's time %v", name, last.Start, step, hist.At)
		}
	}
	check("minutes", hist.Minutes[:], time.Minute)
	check("hours", hist.Hours[:], time.Hour)
	// Within the hour: 10s, 40s, 70s, 5m, 59m completed (59m may fall out
	// with the minute's edge: the model above decides bars; here the sums).
	if got := hist.DayTotals(); got != [2]int{7, 3} {
		t.Errorf("day totals %v, want 7 completed, 3 failed (25 h and 30 h are older)", got)
	}
	if got := hist.HourTotals(); got[0] < 4 || got[0] > 5 || got[1] != 2 {
		t.Errorf("hour totals %v, want 4 or 5 completed (59 min is at the edge), 2 failed", got)
	}
}

// bigStore holds many results in key order and lists them a page of 1,000
// at a time, as S3 does, counting every request: the bucket for the
// refresh-cost test, where s3mem's sort per page would be too slow.
type bigStore struct {
	mu           sync.Mutex
	keys         []string
	objs         map[string]store.Object
	lists, heads int
	gets         int
}

func (b *bigStore) List(_ context.Context, prefix string, fn func(store.Page) error) error {
	i := sort.SearchStrings(b.keys, prefix)
	for {
		b.mu.Lock()
		b.lists++
		b.mu.Unlock()
		page := store.Page{ServerTime: time.Now().Truncate(time.Second)}
		for ; i < len(b.keys) && strings.HasPrefix(b.keys[i], prefix) && len(page.Objects) < 1000; i++ {
			o := b.objs[b.keys[i]]
			o.Metadata = nil
			page.Objects = append(page.Objects, o)
		}
		if err := fn(page); err != nil {
			return err
		}
		if i >= len(b.keys) || !strings.HasPrefix(b.keys[i], prefix) {
			return nil
		}
	}
}

func (b *bigStore) Get(_ context.Context, key string, _ int64) (store.Object, error) {
	b.mu.Lock()
	b.gets++
	b.mu.Unlock()
	if o, ok := b.objs[key]; ok {
		return o, nil
	}
	return store.Object{}, fmt.Errorf("get %s: %w", key, store.ErrNotFound)
}

func (b *bigStore) Head(_ context.Context, key string) (store.Object, error) {
	b.mu.Lock()
	b.heads++
	b.mu.Unlock()
	if o, ok := b.objs[key]; ok {
		o.ServerTime = time.Now().Truncate(time.Second)
		return o, nil
	}
	return store.Object{}, fmt.Errorf("head %s: %w", key, store.ErrNotFound)
}

func (b *bigStore) counts() [3]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return [3]int{b.lists, b.heads, b.gets}
}

// The statement in docs/operations.md (fleetd ui, "What a refresh costs") of
// what a refresh costs, with 100,000 results
// (50,000 completed, 50,000 failed, finished over the last two days):
// snapshot 3 LISTs (pending/, claimed/, leases/) + 11 each for completed/
// and failed/ (10,000 keys, then the page that finds the limit) + a HEAD
// for each of the latest 100 results per state not read before; the chart,
// at most once a minute, one LIST per 1,000 results.
func TestRefreshCostWith100000Results(t *testing.T) {
	if testing.Short() {
		t.Skip("100,000 results")
	}
	b := &bigStore{objs: map[string]store.Object{}}
	now := time.Now()
	for i := range 100_000 {
		st := "completed"
		if i%2 == 1 {
			st = "failed"
		}
		key := fmt.Sprintf("fleet/%s/spec-%06d.json", st, i)
		b.keys = append(b.keys, key)
		b.objs[key] = store.Object{Key: key, ETag: `"e"`, LastModified: now.Add(-time.Duration(i) * 48 * time.Hour / 100_000).Truncate(time.Second),
			Metadata: map[string]string{"fleetd-outcome": st, "fleetd-node": "n" + strconv.Itoa(i%7)}}
	}
	slices.Sort(b.keys)
	clock := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	s, err := New(Config{Store: b, Layout: store.NewLayout("fleet", ""), Bucket: "bkt", Prefix: "fleet", Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	refresh := func(path string) ([3]int, string) {
		t.Helper()
		before := b.counts()
		start := time.Now()
		w := httptest.NewRecorder()
		s.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
		after := b.counts()
		t.Logf("GET %s: %v, %d LIST, %d HEAD, %d GET", path, time.Since(start).Round(time.Millisecond), after[0]-before[0], after[1]-before[1], after[2]-before[2])
		if w.Code != http.StatusOK {
			t.Fatalf("GET %s = %d", path, w.Code)
		}
		return [3]int{after[0] - before[0], after[1] - before[1], after[2] - before[2]}, w.Body.String()
	}
	const snapshotLists, chartLists = 3 + 2*11, 100
	got, page := refresh("/")
	if want := [3]int{snapshotLists + chartLists, 200, 0}; got != want {
		t.Errorf("first load: %v (LIST, HEAD, GET), want %v", got, want)
	}
	// The day's bars hold the results of the last 24 hours: 24 hourly bars,
	// the last one the current hour, so 23 to 24 hours of them by the minute
	// of the hour (half completed): 23,958 to 25,000.
	m := regexp.MustCompile(`id="day-completed">(\d+)<`).FindStringSubmatch(page)
	if len(m) < 2 {
		t.Fatal("no day-completed total on the page")
	}
	if n, _ := strconv.Atoi(m[1]); n < 23_900 || n > 25_100 {
		t.Errorf("the day's completed: %v, want 23,958 to 25,000", m)
	}
	clock = clock.Add(5 * time.Second)
	if got, _ := refresh("/live"); got != [3]int{snapshotLists, 0, 0} {
		t.Errorf("a refresh within the minute: %v, want %d LISTs only", got, snapshotLists)
	}
	clock = clock.Add(time.Minute)
	if got, _ := refresh("/live"); got != [3]int{snapshotLists + chartLists, 0, 0} {
		t.Errorf("the refresh that lists for the chart again: %v, want %d LISTs", got, snapshotLists+chartLists)
	}
}
