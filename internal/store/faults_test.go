package store

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/cellos/fleetd/internal/faultproxy"
)

// faultyStore returns a store on a fresh bucket whose requests pass through
// a fault proxy, with the SDK's own retries off as in fleetd, and counts the
// SlowDown answers it reports.
func faultyStore(t *testing.T) (*Store, *faultproxy.Proxy, *atomic.Int64) {
	t.Helper()
	return faultyStoreTimeout(t, 2*time.Second)
}

// faultyStoreTimeout is faultyStore with attempts of timeout each.
func faultyStoreTimeout(t *testing.T, timeout time.Duration) (*Store, *faultproxy.Proxy, *atomic.Int64) {
	t.Helper()
	direct := newStore(t) // skips where there is no store

	p, err := faultproxy.Start(server.URL, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	client := s3.New(s3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(p.URL()),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(server.AccessKey, server.SecretKey, ""),
		Retryer:      aws.NopRetryer{},
	})
	var slow atomic.Int64
	return New(client, direct.bucket, Policy{Attempts: 3, Timeout: timeout, BaseDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond,
		SlowDown: func() { slow.Add(1) }}), p, &slow
}

func TestWriteOutcomes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	key := regexp.MustCompile(`^k$`)
	for _, tt := range []struct {
		name  string
		rule  faultproxy.Rule
		put   PutOptions
		check func(err error) error
	}{
		{"5xx before forwarding is retried", faultproxy.Rule{Method: "PUT", Key: key, Action: faultproxy.ErrorBefore, Status: 500, Times: 2},
			PutOptions{IfAbsent: true}, wantNil},
		{"a create that landed, answer lost: unknown, not 'exists'", faultproxy.Rule{Method: "PUT", Key: key, Action: faultproxy.ErrorAfter, Status: 500, Times: 1},
			PutOptions{IfAbsent: true}, wantUnknown},
		{"a reset after forwarding: unknown", faultproxy.Rule{Method: "PUT", Key: key, Action: faultproxy.ResetAfter, Times: 1},
			PutOptions{IfAbsent: true}, wantUnknown},
		{"no answer on every attempt: unknown", faultproxy.Rule{Method: "PUT", Key: key, Action: faultproxy.ResetBefore},
			PutOptions{IfAbsent: true}, wantUnknown},
		{"an unconditional put whose answer was lost, retried: lands", faultproxy.Rule{Method: "PUT", Key: key, Action: faultproxy.ErrorAfter, Status: 503, Times: 1},
			PutOptions{}, wantNil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, p, _ := faultyStore(t)
			p.Add(tt.rule)
			_, err := s.Put(ctx, "k", []byte("x"), tt.put)
			if cerr := tt.check(err); cerr != nil {
				t.Error(cerr)
			}
		})
	}
}

func wantNil(err error) error {
	if err != nil {
		return fmt.Errorf("err = %v, want nil", err)
	}
	return nil
}

func wantUnknown(err error) error {
	if !errors.Is(err, ErrUnknown) {
		return fmt.Errorf("err = %v, want ErrUnknown", err)
	}
	return nil
}

func TestDefinitePreconditionStaysDefinite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _, _ := faultyStore(t)
	if _, err := s.Put(ctx, "k", []byte("x"), PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	_, err := s.Put(ctx, "k", []byte("y"), PutOptions{IfAbsent: true})
	if !errors.Is(err, ErrPrecondition) || errors.Is(err, ErrUnknown) {
		t.Errorf("second create = %v, want a definite ErrPrecondition", err)
	}
}

func TestDeleteWhoseAnswerWasLostIsGone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, p, _ := faultyStore(t)
	etag, err := s.Put(ctx, "k", []byte("x"), PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h := p.Add(faultproxy.Rule{Method: "DELETE", Action: faultproxy.ErrorAfter, Status: 500, Times: 1})
	if err := s.Delete(ctx, "k", etag); err != nil {
		t.Errorf("delete whose first answer was lost = %v, want nil (its retry finds it gone)", err)
	}
	if h.Fired() != 1 {
		t.Errorf("fault fired %d times, want 1", h.Fired())
	}
	if _, err := s.Head(ctx, "k"); !errors.Is(err, ErrNotFound) {
		t.Errorf("head after delete = %v, want ErrNotFound", err)
	}
}

func TestSlowDownIsCountedAndRetried(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, p, slow := faultyStore(t)
	p.Add(faultproxy.Rule{Method: "PUT", Action: faultproxy.ErrorBefore, Status: 503, Times: 2})
	if _, err := s.Put(ctx, "k", []byte("x"), PutOptions{}); err != nil {
		t.Fatalf("put after two SlowDowns = %v", err)
	}
	if got := slow.Load(); got != 2 {
		t.Errorf("SlowDown told %d times, want 2", got)
	}
}

func TestDirsThroughFaults(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, p, _ := faultyStore(t)
	for _, k := range []string{"fleet/pending/a.json", "fleet/gpu/pending/b.json", "fleet/cpu/pending/c.json"} {
		if _, err := s.Put(ctx, k, []byte("x"), PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// A listing is a read: an attempt reset after forwarding is simply retried.
	p.Add(faultproxy.Rule{Method: "GET", Query: "delimiter", Action: faultproxy.ResetAfter, Times: 1})
	dirs, err := s.Dirs(ctx, "fleet/")
	if err != nil || strings.Join(dirs, ",") != "fleet/cpu/,fleet/gpu/,fleet/pending/" {
		t.Errorf("Dirs = %v, %v", dirs, err)
	}
}

// TestDeleteWrittenSparesAResubmissionBetweenAttempts: a DELETE If-Match
// lands with its answer lost, and an identical resubmission (same bytes, same
// ETag) lands before the store's next attempt. Delete's retry deletes it;
// DeleteWritten first reads the key, sees the same bytes written at another
// time, and leaves them.
func TestDeleteWrittenSparesAResubmissionBetweenAttempts(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name  string
		del   func(s *Store, key, etag string, modified time.Time) error
		spare bool
	}{
		{"DeleteWritten", func(s *Store, key, etag string, modified time.Time) error {
			return s.DeleteWritten(context.Background(), key, Version{ETag: etag, Modified: modified})
		}, true},
		{"Delete", func(s *Store, key, etag string, _ time.Time) error {
			return s.Delete(context.Background(), key, etag)
		}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			// Attempts of 10 s: each is presigned to expire at its deadline
			// (rounded down to the second), and the first must land even on
			// a loaded machine.
			s, p, _ := faultyStoreTimeout(t, 10*time.Second)
			key := "pending/r.json"
			body := []byte(`{"spec":{"id":"r"}}`)
			etag, err := s.Put(ctx, key, body, PutOptions{})
			if err != nil {
				t.Fatal(err)
			}
			judged, err := s.Head(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			// 1-second Last-Modified: the resubmission must come in a later second.
			time.Sleep(time.Until(judged.LastModified.Add(1100 * time.Millisecond)))
			keyRe := regexp.MustCompile(`^pending/r\.json$`)
			p.Add(faultproxy.Rule{Method: "DELETE", Key: keyRe, Action: faultproxy.ErrorAfter, Status: 500, Times: 1})
			next := p.Add(faultproxy.Rule{Key: keyRe, Action: faultproxy.Hold, Times: 1})
			done := make(chan error, 1)
			go func() { done <- tt.del(s, key, etag, judged.LastModified) }()
			if err := next.Wait(ctx, 1); err != nil { // the first attempt landed; the next is held
				t.Fatal(err)
			}
			if _, err := s.Put(ctx, key, body, PutOptions{IfAbsent: true}); err != nil {
				t.Fatalf("resubmission: %v", err)
			}
			next.Release()
			if err := <-done; err != nil {
				t.Fatalf("%s = %v", tt.name, err)
			}
			_, err = s.Head(ctx, key)
			if spared := err == nil; spared != tt.spare {
				t.Errorf("%s: resubmission spared = %v (head: %v), want %v", tt.name, spared, err, tt.spare)
			}
		})
	}
}
