package admin

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cellos/fleetd/internal/queue"
)

// fakeStore is a map with create-only PUT; enough for the submit rules.
type fakeStore struct{ objs map[string][]byte }

func (f *fakeStore) List(context.Context, string, func(queue.Page) error) error { return nil }
func (f *fakeStore) Get(_ context.Context, key string, _ int64) (queue.Object, error) {
	return f.Head(context.Background(), key)
}
func (f *fakeStore) Head(_ context.Context, key string) (queue.Object, error) {
	if _, ok := f.objs[key]; !ok {
		return queue.Object{}, queue.ErrNotFound
	}
	return queue.Object{Key: key}, nil
}
func (f *fakeStore) Put(_ context.Context, key string, body []byte, opt queue.PutOptions) (string, error) {
	if _, ok := f.objs[key]; ok && opt.IfAbsent {
		return "", queue.ErrPrecondition
	}
	f.objs[key] = body
	return `"e"`, nil
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
			store := &fakeStore{objs: map[string][]byte{}}
			a := New(store, nil, queue.NewLayout("fleet", ""), 64)
			got, err := a.Submit(ctx, tt.files, tt.id, false)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Submit = %v, want an error with %q", err, tt.wantErr)
				}
				if len(store.objs) != 0 {
					t.Errorf("a refused submit wrote %d objects", len(store.objs))
				}
				return
			}
			if err != nil || len(got) != len(tt.wantIDs) || got[0].ID != tt.wantIDs[0] {
				t.Fatalf("Submit = %v, %v; want ids %v", got, err, tt.wantIDs)
			}
			if _, ok := store.objs["fleet/pending/"+tt.wantIDs[0]+".json"]; !ok {
				t.Errorf("pending/%s.json not written", tt.wantIDs[0])
			}
		})
	}
}

func TestSubmitRefusesADuplicate(t *testing.T) {
	store := &fakeStore{objs: map[string][]byte{"fleet/claimed/x.json": nil}}
	a := New(store, nil, queue.NewLayout("fleet", ""), 1<<20)
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
	fakeStore
	n     int
	pages int
}

func (p *pagedStore) List(_ context.Context, prefix string, fn func(queue.Page) error) error {
	for start := 0; start < p.n; start += 1000 {
		page := queue.Page{}
		for i := start; i < min(start+1000, p.n); i++ {
			page.Objects = append(page.Objects, queue.Object{Key: prefix + "k" + strconv.Itoa(i) + ".json"})
		}
		p.pages++
		if err := fn(page); err != nil {
			return err
		}
	}
	return nil
}

func TestStatusCountsAreBounded(t *testing.T) {
	s := &pagedStore{fakeStore: fakeStore{objs: map[string][]byte{}}, n: 3 * CountLimit}
	a := New(s, nil, queue.NewLayout("fleet", ""), 1<<20)
	st, err := a.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Counts["completed"] != CountLimit || !st.AtLeast["completed"] {
		t.Errorf("completed = %d (at least: %v), want %d as a lower bound", st.Counts["completed"], st.AtLeast["completed"], CountLimit)
	}
	// Four states stop at the limit, and leases/ is read whole.
	if max := 4*CountLimit/1000 + 3*CountLimit/1000; s.pages > max {
		t.Errorf("status listed %d pages, want at most %d", s.pages, max)
	}
}

func (f *fakeStore) Delete(_ context.Context, key, _ string) error {
	delete(f.objs, key)
	return nil
}

// Dirs lists the next path segments of the keys under prefix.
func (f *fakeStore) Dirs(_ context.Context, prefix string) ([]string, error) {
	seen := map[string]bool{}
	var dirs []string
	for k := range f.objs {
		rest, ok := strings.CutPrefix(k, prefix)
		if i := strings.IndexByte(rest, '/'); ok && i >= 0 && !seen[rest[:i]] {
			seen[rest[:i]] = true
			dirs = append(dirs, prefix+rest[:i+1])
		}
	}
	return dirs, nil
}

// TestPauseAllFindsEveryLane: --all pauses the flat layout and each lane that
// has a pending/, and nothing that is one of the layout's own directories.
func TestPauseAllFindsEveryLane(t *testing.T) {
	store := &fakeStore{objs: map[string][]byte{
		"fleet/pending/a.json": nil, "fleet/completed/b.json": nil, "fleet/leases/c.json": nil,
		"fleet/gpu/pending/d.json": nil, "fleet/cpu/pending/e.json": nil, "fleet/notalane/x": nil,
		"fleet/recovery/scan.json": nil,
	}}
	a := New(store, nil, queue.NewLayout("fleet", ""), 1<<20)
	lanes, err := a.Pause(context.Background(), "fleet", true, "ops")
	slices.Sort(lanes)
	if err != nil || strings.Join(lanes, ",") != "fleet,fleet/cpu,fleet/gpu" {
		t.Fatalf("Pause --all = %v, %v; want fleet, fleet/cpu, fleet/gpu", lanes, err)
	}
	for _, k := range []string{"fleet/pending/!paused", "fleet/gpu/pending/!paused", "fleet/cpu/pending/!paused"} {
		if _, ok := store.objs[k]; !ok {
			t.Errorf("no marker %s", k)
		}
	}
	if _, err := a.Resume(context.Background(), "fleet", true); err != nil {
		t.Fatal(err)
	}
	if _, ok := store.objs["fleet/gpu/pending/!paused"]; ok {
		t.Error("resume --all left a marker")
	}
}
