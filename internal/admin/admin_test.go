package admin

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/queueview"
	"github.com/cellos/fleetd/internal/s3mem"
	"github.com/cellos/fleetd/internal/store"
)

// setup returns the tools on an in-memory store holding keys (empty
// objects), with a real protocol.
func setup(t *testing.T, maxSpecBytes int64, keys ...string) (*Admin, *s3mem.Store) {
	t.Helper()
	storage := s3mem.New(s3mem.Quirks{})
	for _, k := range keys {
		if _, err := storage.Put(context.Background(), k, []byte("{}"), store.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	layout := store.NewLayout("fleet", "")
	proto := protocol.New(protocol.Config{Layout: layout, Node: "tool", TTL: protocol.MinTTL, MaxAttempts: 3,
		Logger: slog.New(slog.DiscardHandler)}, storage)
	return New(storage, proto, layout, maxSpecBytes), storage
}

// keys returns the keys under prefix.
func keys(s *s3mem.Store, prefix string) []string {
	var ks []string
	for _, o := range s.Snapshot(prefix) {
		ks = append(ks, o.Key)
	}
	return ks
}

func TestSubmitRules(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name    string
		files   []SpecFile
		id      string
		wantIDs []string
		wantErr string
	}{
		{"id from spec.id", []SpecFile{{"a.json", []byte(`{"spec":{"id":"x"}}`)}}, "", []string{"x"}, ""},
		{"id from the file name", []SpecFile{{"dir/job-7.json", []byte(`{"spec":{}}`)}}, "", []string{"job-7"}, ""},
		{"--id wins", []SpecFile{{"a.json", []byte(`{"spec":{"id":"x"}}`)}}, "y", []string{"y"}, ""},
		{"stdin needs an id", []SpecFile{{"-", []byte(`{"spec":{}}`)}}, "", nil, "no spec id"},
		{"no spec object", []SpecFile{{"a.json", []byte(`{"kind":"x"}`)}}, "", nil, `no "spec" object`},
		{"one bad file changes nothing", []SpecFile{{"a.json", []byte(`{"spec":{"id":"a"}}`)}, {"b.json", []byte(`[1]`)}}, "", nil, "not a JSON object"},
		{"a slash is not an id", []SpecFile{{"a.json", []byte(`{"spec":{"id":"a/b"}}`)}}, "", nil, "not a usable spec id"},
		{"too large", []SpecFile{{"a.json", []byte(`{"spec":{"id":"` + strings.Repeat("x", 100) + `"}}`)}}, "", nil, "over CELLOS_FLEET_MAX_SPEC_BYTES"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a, storage := setup(t, 64)
			got, err := a.Submit(ctx, tt.files, tt.id, false)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Submit = %v, want an error with %q", err, tt.wantErr)
				}
				if got := keys(storage, ""); len(got) != 0 {
					t.Errorf("a refused submit wrote %v", got)
				}
				return
			}
			if err != nil || len(got) != len(tt.wantIDs) || got[0].ID != tt.wantIDs[0] {
				t.Fatalf("Submit = %v, %v; want ids %v", got, err, tt.wantIDs)
			}
			if got, want := keys(storage, ""), []string{"fleet/pending/" + tt.wantIDs[0] + ".json"}; !slices.Equal(got, want) {
				t.Errorf("objects after submit = %v, want %v (the lease deleted)", got, want)
			}
		})
	}
}

func TestSubmitRefusesADuplicate(t *testing.T) {
	a, _ := setup(t, 1<<20, "fleet/claimed/x.json")
	_, err := a.Submit(context.Background(), []SpecFile{{"a.json", []byte(`{"spec":{"id":"x"}}`)}}, "", false)
	if err == nil || !strings.Contains(err.Error(), "already in claimed/") {
		t.Errorf("Submit of an in-flight id = %v, want a refusal naming claimed/", err)
	}
	if _, err := a.Submit(context.Background(), nil, "", false); !errors.Is(err, ErrUsage) {
		t.Errorf("Submit of nothing = %v, want ErrUsage", err)
	}
}

// pagedStore lists n work keys under every directory, 1,000 a page.
type pagedStore struct {
	*s3mem.Store
	n     int
	pages int
}

func (p *pagedStore) List(_ context.Context, prefix string, fn func(store.Page) error) error {
	for start := 0; start < p.n; start += 1000 {
		page := store.Page{}
		for i := start; i < min(start+1000, p.n); i++ {
			page.Objects = append(page.Objects, store.Object{Key: prefix + "k" + strconv.Itoa(i) + ".json"})
		}
		p.pages++
		if err := fn(page); err != nil {
			return err
		}
	}
	return nil
}

func TestStatusCountsAreBounded(t *testing.T) {
	s := &pagedStore{Store: s3mem.New(s3mem.Quirks{}), n: 3 * queueview.KeyLimit}
	a := New(s, nil, store.NewLayout("fleet", ""), 1<<20)
	st, err := a.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Counts["completed"] != queueview.KeyLimit || !st.AtLeast["completed"] {
		t.Errorf("completed = %d (at least: %v), want %d as a lower bound", st.Counts["completed"], st.AtLeast["completed"], queueview.KeyLimit)
	}
	// Four states stop at the limit, and leases/ is read whole.
	if max := 4*queueview.KeyLimit/1000 + 3*queueview.KeyLimit/1000; s.pages > max {
		t.Errorf("status listed %d pages, want at most %d", s.pages, max)
	}
}

// TestPauseAllFindsEveryLane: --all pauses the flat layout and each lane that
// has a pending/, and nothing that is one of the layout's own directories.
func TestPauseAllFindsEveryLane(t *testing.T) {
	a, storage := setup(t, 1<<20,
		"fleet/pending/a.json", "fleet/completed/b.json", "fleet/leases/c.json",
		"fleet/gpu/pending/d.json", "fleet/cpu/pending/e.json", "fleet/notalane/x",
		"fleet/recovery/scan.json")
	lanes, err := a.Pause(context.Background(), "fleet", true, "ops")
	slices.Sort(lanes)
	if err != nil || strings.Join(lanes, ",") != "fleet,fleet/cpu,fleet/gpu" {
		t.Fatalf("Pause --all = %v, %v; want fleet, fleet/cpu, fleet/gpu", lanes, err)
	}
	for _, k := range []string{"fleet/pending/!paused", "fleet/gpu/pending/!paused", "fleet/cpu/pending/!paused"} {
		if !slices.Contains(keys(storage, ""), k) {
			t.Errorf("no marker %s", k)
		}
	}
	if _, err := a.Resume(context.Background(), "fleet", true); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(keys(storage, ""), "fleet/gpu/pending/!paused") {
		t.Error("resume --all left a marker")
	}
}

// TestStatusReadsThePauseMarkerOnlyWhenListed: status learns that the lane is
// paused from its listing of pending/, and reads who paused it only then.
func TestStatusReadsThePauseMarkerOnlyWhenListed(t *testing.T) {
	ctx := context.Background()
	a, _ := setup(t, 1<<20, "fleet/pending/a.json", "fleet/claimed/b.json", "fleet/failed/c.json")
	st, err := a.Status(ctx)
	if err != nil || st.Paused != "" || st.Counts["pending"] != 1 || st.Counts["claimed"] != 1 || st.Counts["failed"] != 1 || len(st.InFlight) != 0 {
		t.Fatalf("Status = %+v, %v; want 1 pending, 1 claimed without a lease (not listed in flight), 1 failed", st, err)
	}
	if _, err := a.Pause(ctx, "fleet", false, "ops@n1"); err != nil {
		t.Fatal(err)
	}
	if st, err = a.Status(ctx); err != nil || st.Paused != "ops@n1" || st.Counts["pending"] != 1 {
		t.Errorf("paused: Status = %+v, %v; want paused by ops@n1, the marker not counted", st, err)
	}
}
