package store

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/cellos/fleetd/internal/faultproxy"
)

// versionedStore returns a store in VersionedDeletes on a fresh versioned
// MinIO bucket, its requests through a fault proxy.
func minioStore(t *testing.T) (*Store, *faultproxy.Proxy) {
	t.Helper()
	needServers(t)
	name := fmt.Sprintf("queue-v-%d", seq.Add(1))
	if err := minioServer.CreateBucket(context.Background(), minioServer.Client(), name); err != nil {
		t.Fatal(err)
	}
	p, err := faultproxy.Start(minioServer.URL, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	client := minioServer.Client(func(o *s3.Options) {
		o.BaseEndpoint = aws.String(p.URL())
		o.Retryer = aws.NopRetryer{}
	})
	s := New(client, name, Policy{Attempts: 3, Timeout: 5 * time.Second, BaseDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond})
	s.SetDeleteMode(VersionedDeletes)
	return s, p
}

// put writes body to key and returns the version written.
func put(t *testing.T, s *Store, key, body string) Version {
	t.Helper()
	ctx := context.Background()
	if _, err := s.Put(ctx, key, []byte(body), PutOptions{}); err != nil {
		t.Fatal(err)
	}
	o, err := s.Head(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if o.VersionID == "" {
		t.Fatalf("HEAD %s on a versioned bucket: no version id", key)
	}
	return Version{ETag: o.ETag, Modified: o.LastModified, ID: o.VersionID}
}

func versionsOf(t *testing.T, s *Store, key string) []ObjectVersion {
	t.Helper()
	vs, err := s.Versions(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

// On MinIO, which ignores If-Match on DELETE: a delete of a replaced version
// is refused and deletes nothing; a delete of the current one removes it and
// every version under it, so nothing comes back and nothing is left.
func TestVersionedDeleteOnMinIO(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := minioStore(t)
	const key = "pending/a.json"
	v1 := put(t, s, key, "one")
	v2 := put(t, s, key, "two")
	if err := s.DeleteWritten(ctx, key, v1); !errors.Is(err, ErrPrecondition) {
		t.Fatalf("delete of the replaced version = %v, want ErrPrecondition", err)
	}
	if n := len(versionsOf(t, s, key)); n != 2 {
		t.Fatalf("%d versions after a refused delete, want 2", n)
	}
	if err := s.DeleteWritten(ctx, key, v2); err != nil {
		t.Fatalf("delete of the current version: %v", err)
	}
	if _, err := s.Head(ctx, key); !errors.Is(err, ErrNotFound) {
		t.Errorf("HEAD after the delete = %v, want not found (no older version back)", err)
	}
	if vs := versionsOf(t, s, key); len(vs) != 0 {
		t.Errorf("versions left: %+v", vs)
	}
	if err := s.DeleteWritten(ctx, key, v2); err != nil {
		t.Errorf("delete of a key already gone = %v, want nil", err)
	}
}

// A version written after the delete listed the key, before it deleted the
// current version by id: that newer version stays, and the delete answers
// ErrPrecondition, as DELETE with If-Match would have after that write.
// An identical resubmission is a newer version too.
func TestVersionedDeleteSparesAWriteAfterItsListing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, p := minioStore(t)
	const key = "pending/b.json"
	v := put(t, s, key, "same bytes")
	held := p.Add(faultproxy.Rule{Method: "DELETE", Key: regexp.MustCompile(`^pending/b\.json$`), Query: "versionId=", Action: faultproxy.Hold, Times: 1})
	done := make(chan error, 1)
	go func() { done <- s.DeleteWritten(ctx, key, v) }()
	if err := held.Wait(ctx, 1); err != nil {
		t.Fatal(err)
	}
	resub := put(t, s, key, "same bytes")
	held.Release()
	if err := <-done; !errors.Is(err, ErrPrecondition) {
		t.Fatalf("delete = %v, want ErrPrecondition (a newer version was written)", err)
	}
	o, err := s.Head(ctx, key)
	if err != nil || o.VersionID != resub.ID {
		t.Fatalf("HEAD = %+v, %v; want the resubmission %s", o, err, resub.ID)
	}
	if vs := versionsOf(t, s, key); len(vs) != 1 {
		t.Errorf("versions: %+v, want only the resubmission", vs)
	}
}

// The answer to a delete by version id is lost: the repeat deletes the same
// version again, which is harmless, and the delete is done.
func TestVersionedDeleteLostAnswer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, p := minioStore(t)
	const key = "leases/c.json"
	put(t, s, key, "claiming")
	v := put(t, s, key, "running")
	lost := p.Add(faultproxy.Rule{Method: "DELETE", Key: regexp.MustCompile(`^leases/c\.json$`), Query: "versionId=", Action: faultproxy.ErrorAfter, Status: 500, Times: 1})
	if err := s.DeleteWritten(ctx, key, Version{ETag: v.ETag}); err != nil {
		t.Fatalf("delete = %v", err)
	}
	if lost.Fired() != 1 {
		t.Fatalf("the fault fired %d times, want 1", lost.Fired())
	}
	if vs := versionsOf(t, s, key); len(vs) != 0 {
		t.Errorf("versions left: %+v", vs)
	}
}

// When the check for a newer version gets no answer, the delete is unknown;
// repeated, it settles.
func TestVersionedDeleteUnknownCheckSettlesOnRepeat(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, p := minioStore(t)
	const key = "pending/d.json"
	v := put(t, s, key, "d")
	p.Add(faultproxy.Rule{Method: "HEAD", Key: regexp.MustCompile(`^pending/d\.json$`), Action: faultproxy.ErrorBefore, Status: 503, Times: 3})
	err := s.DeleteWritten(ctx, key, v)
	if !errors.Is(err, ErrUnknown) {
		t.Fatalf("delete = %v, want ErrUnknown", err)
	}
	if err := s.DeleteWritten(ctx, key, v); err != nil {
		t.Fatalf("repeat = %v, want nil", err)
	}
}

// A key with many versions (a lease written at claim, run and release): the
// versions under the current one go in one DeleteObjects request, then the
// current one.
func TestVersionedDeleteOfManyVersions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, p := minioStore(t)
	const key = "leases/e.json"
	for _, state := range []string{"claiming", "running", "releasing"} {
		put(t, s, key, state)
	}
	v := put(t, s, key, "finishing")
	batch := p.Add(faultproxy.Rule{Method: "POST", Query: "delete", Action: faultproxy.Pass})
	if err := s.DeleteWritten(ctx, key, Version{ETag: v.ETag}); err != nil {
		t.Fatalf("delete = %v", err)
	}
	if batch.Fired() != 1 {
		t.Errorf("%d DeleteObjects requests, want 1", batch.Fired())
	}
	if vs := versionsOf(t, s, key); len(vs) != 0 {
		t.Errorf("versions left: %+v", vs)
	}
}

// A key with more versions than one DeleteObjects may name (1,000): a lease
// renewed for hours before pruning existed, or written by plain PUTs. The
// delete goes in batches and leaves nothing. (Found by review: one batch of
// 1,001 keys got 400 MalformedXML on every try, and the lease stayed.)
func TestVersionedDeleteOfOverAThousandVersions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, p := minioStore(t)
	const key = "leases/long.json"
	var last Version
	for i := range 1002 {
		etag, err := s.Put(ctx, key, fmt.Appendf(nil, `{"renewal":%d}`, i), PutOptions{})
		if err != nil {
			t.Fatal(err)
		}
		last = Version{ETag: etag}
	}
	batches := p.Add(faultproxy.Rule{Method: "POST", Query: "delete", Action: faultproxy.Pass})
	if err := s.DeleteWritten(ctx, key, last); err != nil {
		t.Fatalf("delete = %v", err)
	}
	if batches.Fired() != 2 {
		t.Errorf("%d DeleteObjects requests for 1,001 older versions, want 2", batches.Fired())
	}
	if vs := versionsOf(t, s, key); len(vs) != 0 {
		t.Errorf("%d versions left", len(vs))
	}
}

// Replacing writes (a lease's renewals, the recovery marker's moves) prune
// the versions they replace every PruneEvery writes, so a key written for
// hours keeps a bounded number of versions.
func TestReplacingWritesPruneVersions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := minioStore(t)
	const key = "recovery/scan.json"
	etag, err := s.Put(ctx, key, []byte(`{"turn":0}`), PutOptions{IfAbsent: true})
	if err != nil {
		t.Fatal(err)
	}
	most := 0
	for i := range 5 * PruneEvery {
		if etag, err = s.Put(ctx, key, fmt.Appendf(nil, `{"turn":%d}`, i+1), PutOptions{IfMatch: etag}); err != nil {
			t.Fatal(err)
		}
		most = max(most, len(versionsOf(t, s, key)))
	}
	if most > PruneEvery+1 {
		t.Errorf("up to %d versions kept over %d replacing writes, want at most %d", most, 5*PruneEvery, PruneEvery+1)
	}
	if o, err := s.Get(ctx, key, 100); err != nil || string(o.Body) != fmt.Sprintf(`{"turn":%d}`, 5*PruneEvery) {
		t.Errorf("current = %q, %v; want the last write", o.Body, err)
	}
}

// Versioning suspended on the bucket after the self-test (mc version
// suspend): writes then replace the "null" version in place, and a delete
// by version id could remove a newer write. The first write that gets no
// version id of its own stops every delete, reported unknown and naming the
// cause, until versioning is enabled again. (Found by review.)
func TestSuspendedVersioningStopsDeletes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := minioStore(t)
	versioning := func(status types.BucketVersioningStatus) {
		t.Helper()
		if _, err := s.client.PutBucketVersioning(ctx, &s3.PutBucketVersioningInput{Bucket: &s.bucket,
			VersioningConfiguration: &types.VersioningConfiguration{Status: status}}); err != nil {
			t.Fatal(err)
		}
	}
	versioning(types.BucketVersioningStatusSuspended)
	const key = "pending/sus.json"
	etag, err := s.Put(ctx, key, []byte("a submission"), PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = s.DeleteWritten(ctx, key, Version{ETag: etag})
	if !errors.Is(err, ErrVersioningOff) || !errors.Is(err, ErrUnknown) {
		t.Fatalf("delete while versioning is suspended = %v, want unknown, ErrVersioningOff", err)
	}
	if _, err := s.Head(ctx, key); err != nil {
		t.Fatalf("the spec was deleted: %v", err)
	}
	versioning(types.BucketVersioningStatusEnabled)
	if etag, err = s.Put(ctx, key, []byte("a submission, again"), PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteWritten(ctx, key, Version{ETag: etag}); err != nil {
		t.Fatalf("delete once versioning is on again = %v", err)
	}
	if vs := versionsOf(t, s, key); len(vs) != 0 {
		t.Errorf("versions left: %+v", vs)
	}
}
