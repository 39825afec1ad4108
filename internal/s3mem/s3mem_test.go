package s3mem_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cellos/fleetd/internal/admin"
	"github.com/cellos/fleetd/internal/pipeline"
	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/s3mem"
	"github.com/cellos/fleetd/internal/store"
	"github.com/cellos/fleetd/internal/ui"
)

// The store stands in for *store.Store wherever one is used.
var (
	_ protocol.Store = (*s3mem.Store)(nil)
	_ pipeline.Store = (*s3mem.Store)(nil)
	_ admin.Store    = (*s3mem.Store)(nil)
	_ ui.Store       = (*s3mem.Store)(nil)
)

func TestConditionalPut(t *testing.T) {
	ctx := context.Background()
	s := s3mem.New(s3mem.Quirks{})
	e1, err := s.Put(ctx, "k", []byte("a"), store.PutOptions{IfAbsent: true})
	if err != nil || e1 != s3mem.ETag([]byte("a")) {
		t.Fatalf("create: %q %v", e1, err)
	}
	if e1 != `"0cc175b9c0f1b6a831c399e269772661"` {
		t.Fatalf("ETag %s is not the quoted MD5", e1)
	}
	if _, err := s.Put(ctx, "k", []byte("b"), store.PutOptions{IfAbsent: true}); !errors.Is(err, store.ErrPrecondition) {
		t.Fatalf("second create: %v, want 412", err)
	}
	if _, err := s.Put(ctx, "k", []byte("b"), store.PutOptions{IfMatch: `"nope"`}); !errors.Is(err, store.ErrPrecondition) {
		t.Fatalf("If-Match wrong ETag: %v, want 412", err)
	}
	if _, err := s.Put(ctx, "gone", []byte("b"), store.PutOptions{IfMatch: e1}); !errors.Is(err, store.ErrPrecondition) {
		t.Fatalf("If-Match on a missing key: %v, want 412 as store.Store reports it", err)
	}
	e2, err := s.Put(ctx, "k", []byte("b"), store.PutOptions{IfMatch: e1, Metadata: map[string]string{"Fleetd-X": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	o, err := s.Get(ctx, "k", 10)
	if err != nil || string(o.Body) != "b" || o.ETag != e2 || o.Metadata["fleetd-x"] != "1" {
		t.Fatalf("get: %+v %v", o, err)
	}
	if _, err := s.Get(ctx, "k", 0); !errors.Is(err, store.ErrTooLarge) {
		t.Fatalf("get over the limit: %v", err)
	}
	if _, err := s.Head(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("head missing: %v", err)
	}
}

func TestIdenticalWritesShareETagNotVersion(t *testing.T) {
	s := s3mem.New(s3mem.Quirks{})
	e1, v1, _ := s.PutVersion("k", []byte("same"), store.PutOptions{})
	e2, v2, _ := s.PutVersion("k", []byte("same"), store.PutOptions{})
	if e1 != e2 || v1 == v2 {
		t.Fatalf("ETags %s %s versions %d %d: want equal ETags, distinct versions", e1, e2, v1, v2)
	}
}

func TestConditionalDelete(t *testing.T) {
	ctx := context.Background()
	for _, quirk := range []bool{false, true} {
		s := s3mem.New(s3mem.Quirks{IgnoreDeleteIfMatch: quirk})
		e, _ := s.Put(ctx, "k", []byte("a"), store.PutOptions{})
		err := s.Delete(ctx, "k", `"stale"`)
		_, herr := s.Head(ctx, "k")
		if !quirk && (!errors.Is(err, store.ErrPrecondition) || herr != nil) {
			t.Fatalf("stale If-Match: %v, head %v: want 412 and the object kept", err, herr)
		}
		if quirk && (err != nil || !errors.Is(herr, store.ErrNotFound)) {
			t.Fatalf("MinIO quirk: %v, head %v: want deleted anyway", err, herr)
		}
		if !quirk {
			if err := s.Delete(ctx, "k", e); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Delete(ctx, "k", e); err != nil {
			t.Fatalf("delete of a missing key: %v, want nil (gone)", err)
		}
	}
}

func TestCopy(t *testing.T) {
	ctx := context.Background()
	s := s3mem.New(s3mem.Quirks{})
	e, _ := s.Put(ctx, "a", []byte("x"), store.PutOptions{})
	if err := s.Copy(ctx, "a", "b", store.CopyOptions{SourceIfMatch: `"other"`}); !errors.Is(err, store.ErrPrecondition) {
		t.Fatalf("copy stale source: %v", err)
	}
	if err := s.Copy(ctx, "nope", "b", store.CopyOptions{}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("copy missing source: %v", err)
	}
	if err := s.Copy(ctx, "a", "b", store.CopyOptions{SourceIfMatch: e, Metadata: map[string]string{"m": "1"}}); err != nil {
		t.Fatal(err)
	}
	o, _ := s.Head(ctx, "b")
	if o.ETag != e || o.Metadata["m"] != "1" {
		t.Fatalf("copy: %+v", o)
	}
}

func TestListPagesAndTimes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		s := s3mem.New(s3mem.Quirks{PageSize: 2})
		time.Sleep(1500 * time.Millisecond) // 00:00:01.5
		for _, k := range []string{"p/c", "p/a", "p/d/x", "p/b", "q/z"} {
			s.Put(ctx, k, []byte(k), store.PutOptions{})
		}
		time.Sleep(time.Second) // 00:00:02.5
		var keys []string
		pages := 0
		err := s.List(ctx, "p/", func(p store.Page) error {
			pages++
			for _, o := range p.Objects {
				keys = append(keys, o.Key)
				if o.LastModified.Nanosecond() != 0 || o.LastModified.Second() != 1 {
					t.Errorf("LastModified %v: want 00:00:01, to the second", o.LastModified)
				}
			}
			if p.ServerTime.Second() != 2 || p.ServerTime.Nanosecond() != 0 {
				t.Errorf("ServerTime %v: want 00:00:02", p.ServerTime)
			}
			return nil
		})
		if err != nil || pages != 2 || len(keys) != 4 || keys[0] != "p/a" || keys[3] != "p/d/x" {
			t.Fatalf("list: %v in %d pages, %v", keys, pages, err)
		}
		dirs, _ := s.Dirs(ctx, "p/")
		if len(dirs) != 1 || dirs[0] != "p/d/" {
			t.Fatalf("dirs %v", dirs)
		}
	})
}

// TestPutAtBackdates: an object written in the past by a test reads as any
// other write, only older: the ETag of its bytes, a new version, metadata as
// the SDK returns it, LastModified to the second.
func TestPutAtBackdates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		s := s3mem.New(s3mem.Quirks{})
		_, v1, _ := s.PutVersion("k", []byte("a"), store.PutOptions{})
		past := time.Now().Add(-90*time.Second - 300*time.Millisecond)
		if e := s.PutAt("k", []byte("a"), map[string]string{"Fleetd-X": "1"}, past); e != s3mem.ETag([]byte("a")) {
			t.Fatalf("PutAt ETag %s", e)
		}
		o, err := s.Head(ctx, "k")
		if err != nil || o.Metadata["fleetd-x"] != "1" || s.Version("k") == v1 {
			t.Fatalf("head: %+v %v, version %d after %d", o, err, s.Version("k"), v1)
		}
		if age := o.ServerTime.Sub(o.LastModified); age != 91*time.Second {
			t.Errorf("age %v: want 91s (LastModified to the second)", age)
		}
	})
}

// With Versioning, as on a bucket with versioning enabled: a write keeps the
// version it replaces, a DELETE by id removes exactly one version and the
// newest under it becomes current again, and a plain DELETE writes a marker.
func TestVersioning(t *testing.T) {
	ctx := context.Background()
	s := s3mem.New(s3mem.Quirks{Versioning: true, IgnoreDeleteIfMatch: true})
	for _, body := range []string{"one", "two"} {
		if _, err := s.Put(ctx, "k", []byte(body), store.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	vs, err := s.Versions(ctx, "k")
	if err != nil || len(vs) != 2 || vs[0].ETag != s3mem.ETag([]byte("two")) {
		t.Fatalf("versions = %+v, %v; want two, current first", vs, err)
	}
	o, err := s.Head(ctx, "k")
	if err != nil || o.VersionID != vs[0].ID {
		t.Fatalf("HEAD = %+v, %v; want version %s", o, err, vs[0].ID)
	}
	if v, current := s.DeleteVersionID("k", vs[0].ID); v == 0 || !current {
		t.Fatalf("delete of the current version: %d, current %v", v, current)
	}
	if o, err := s.Get(ctx, "k", 100); err != nil || string(o.Body) != "one" {
		t.Fatalf("after deleting the current version: %q, %v; want the one under it back", o.Body, err)
	}
	if err := s.Delete(ctx, "k", `"ignored"`); err != nil { // If-Match ignored: a marker
		t.Fatal(err)
	}
	if _, err := s.Head(ctx, "k"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("HEAD under a delete marker = %v, want not found", err)
	}
	if _, err := s.Put(ctx, "k", []byte("three"), store.PutOptions{IfAbsent: true}); err != nil {
		t.Fatalf("create-only PUT over a delete marker: %v", err)
	}
	vs, _ = s.Versions(ctx, "k")
	if len(vs) != 3 || !vs[1].Marker {
		t.Fatalf("versions = %+v, want three, a marker, one", vs)
	}
}
