package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/time/rate"

	"github.com/cellos/fleetd/internal/localstore"
	"github.com/cellos/fleetd/internal/toolbin"
	"github.com/cellos/fleetd/internal/versitygw"
)

var (
	server      *versitygw.Server
	minioServer *localstore.Server
	seq         atomic.Int64
	// missing, when set, is why the servers could not be started here: the
	// tests that need them skip with it (outside CI only: toolbin.MaySkip).
	missing string
)

// needServers skips a test that needs versitygw and MinIO where they are
// not installed.
func needServers(t *testing.T) {
	t.Helper()
	if missing != "" {
		t.Skip(missing)
	}
}

func TestMain(m *testing.M) {
	os.Exit(func() int {
		for _, kind := range localstore.Kinds {
			if _, err := localstore.Binary(kind); err != nil {
				if !toolbin.MaySkip(err) {
					fmt.Fprintln(os.Stderr, err)
					return 1
				}
				missing = err.Error()
				return m.Run()
			}
		}
		bin, err := versitygw.Binary()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		dir, err := os.MkdirTemp("", "store-test-*")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		if server, err = versitygw.Start(bin, dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer server.Stop()
		// MinIO, for the versioned deletes (versions_test.go).
		if minioServer, err = localstore.Start("minio", filepath.Join(dir, "minio")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer minioServer.Stop()
		return m.Run()
	}())
}

func newClient(opts ...func(*s3.Options)) *s3.Client {
	return s3.New(s3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(server.URL),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(server.AccessKey, server.SecretKey, ""),
	}, opts...)
}

// newStore returns a store on a fresh bucket.
func newStore(t *testing.T) *Store {
	t.Helper()
	needServers(t)
	client := newClient()
	name := fmt.Sprintf("queue-%d", seq.Add(1))
	if _, err := client.CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: &name}); err != nil {
		t.Fatal(err)
	}
	return New(client, name, Policy{})
}

func TestConditionalPut(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	tag1, err := s.Put(ctx, "k", []byte("one"), PutOptions{IfAbsent: true, Metadata: map[string]string{"fleetd-attempts": "2"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "k", []byte("two"), PutOptions{IfAbsent: true}); !errors.Is(err, ErrPrecondition) {
		t.Fatalf("second create-only put: %v, want ErrPrecondition", err)
	}
	tag2, err := s.Put(ctx, "k", []byte("three"), PutOptions{IfMatch: tag1})
	if err != nil || tag2 == tag1 {
		t.Fatalf("put if-match current: tag %q, %v", tag2, err)
	}
	if _, err := s.Put(ctx, "k", []byte("four"), PutOptions{IfMatch: tag1}); !errors.Is(err, ErrPrecondition) {
		t.Fatalf("put if-match stale: %v, want ErrPrecondition", err)
	}
	if _, err := s.Put(ctx, "gone", []byte("x"), PutOptions{IfMatch: tag1}); !errors.Is(err, ErrPrecondition) {
		t.Fatalf("put if-match on a missing key: %v, want ErrPrecondition", err)
	}
	o, err := s.Get(ctx, "k", 100)
	if err != nil || string(o.Body) != "three" || o.ETag != tag2 || o.ServerTime.IsZero() || o.LastModified.IsZero() {
		t.Fatalf("get = %+v, %v", o, err)
	}
}

func TestCreateOnlyHasOneWinner(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	for round := range 5 {
		var wins atomic.Int64
		var wg sync.WaitGroup
		key := fmt.Sprintf("claimed/%d.json", round)
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := s.Put(context.Background(), key, []byte("x"), PutOptions{IfAbsent: true})
				switch {
				case err == nil:
					wins.Add(1)
				case !errors.Is(err, ErrPrecondition):
					t.Errorf("put: %v", err)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("round %d: %d winners, want 1", round, wins.Load())
		}
	}
}

func TestGetHeadDeleteErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	if _, err := s.Get(ctx, "missing", 10); !errors.Is(err, ErrNotFound) {
		t.Errorf("get missing: %v", err)
	}
	if _, err := s.Head(ctx, "missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("head missing: %v", err)
	}
	if err := s.Delete(ctx, "missing", ""); err != nil {
		t.Errorf("delete missing: %v", err)
	}
	if _, err := s.Put(ctx, "big", make([]byte, 100), PutOptions{}); err != nil {
		t.Fatal(err)
	}
	o, err := s.Get(ctx, "big", 99)
	if !errors.Is(err, ErrTooLarge) || o.Size != 100 || o.Body != nil {
		t.Errorf("get over limit = %+v, %v; want ErrTooLarge with the size", o, err)
	}
	if err := s.Copy(ctx, "big", "copy", CopyOptions{Metadata: map[string]string{"fleetd-reason": "r"}}); err != nil {
		t.Fatal(err)
	}
	h, err := s.Head(ctx, "copy")
	if err != nil || h.Size != 100 || h.Metadata["fleetd-reason"] != "r" {
		t.Errorf("head copy = %+v, %v", h, err)
	}
}

func TestListPages(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	const n = 1005 // more than one 1000-key page
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := s.Put(ctx, fmt.Sprintf("p/%04d.json", i), []byte("{}"), PutOptions{}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	_, _ = s.Put(ctx, "other/x.json", []byte("{}"), PutOptions{})
	var pages, keys int
	err := s.List(ctx, "p/", func(p Page) error {
		pages++
		keys += len(p.Objects)
		if p.ServerTime.IsZero() || time.Since(p.ServerTime) > time.Hour {
			t.Errorf("page server time %v", p.ServerTime)
		}
		return nil
	})
	if err != nil || pages != 2 || keys != n {
		t.Errorf("List = %d pages, %d keys, %v; want 2 pages, %d keys", pages, keys, err, n)
	}
}

func TestRateLimitCoversEveryRequest(t *testing.T) {
	t.Parallel()
	needServers(t)
	lim := rate.NewLimiter(rate.Every(time.Hour), 3) // three tokens, then none
	client := newClient(func(o *s3.Options) { o.APIOptions = append(o.APIOptions, RateLimit(lim, nil)) })
	name := fmt.Sprintf("queue-%d", seq.Add(1))
	ctx := context.Background()
	if _, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &name}); err != nil {
		t.Fatal(err)
	}
	s := New(client, name, Policy{})
	if _, err := s.Put(ctx, "a", []byte("x"), PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Head(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	// The fourth request must wait for a token an hour away: its context ends first.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := s.Head(short, "a"); err == nil {
		t.Fatal("fourth request went through a limiter with no tokens left")
	}
}

// TestCopyAwkwardKeys: a COPY reaches the object named, whatever its key
// holds; an unescaped source would name another object or none.
func TestCopyAwkwardKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	for _, key := range []string{"p/pct%41", "p/plus+1", "p/enc%2Fslash", "p/new\nline", "p/sp ace?#&=;:@$!'()*,", "p/ünï日本", "p/all %2F+\n%"} {
		if _, err := s.Put(ctx, key, []byte(key), PutOptions{}); err != nil {
			t.Fatalf("put %q: %v", key, err)
		}
		if err := s.Copy(ctx, key, key+".copy", CopyOptions{Metadata: map[string]string{"fleetd-reason": "r"}}); err != nil {
			t.Errorf("copy %q: %v", key, err)
			continue
		}
		o, err := s.Get(ctx, key+".copy", 1<<10)
		if err != nil || string(o.Body) != key || o.Metadata["fleetd-reason"] != "r" {
			t.Errorf("copy of %q = %q %v, %v", key, o.Body, o.Metadata, err)
		}
	}
}

func TestCopySource(t *testing.T) {
	for key, want := range map[string]string{
		"fleet/pending/a-b_c.d~e.json": "bkt/fleet/pending/a-b_c.d~e.json",
		"p/plus+1":                     "bkt/p/plus%2B1",
		"p/enc%2Fslash":                "bkt/p/enc%252Fslash",
		"p/new\nline sp":               "bkt/p/new%0Aline%20sp",
		"p/ü":                          "bkt/p/%C3%BC",
	} {
		if got := copySource("bkt", key); got != want {
			t.Errorf("copySource(%q) = %q, want %q", key, got, want)
		}
	}
}
