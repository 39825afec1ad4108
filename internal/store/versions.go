package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// DeleteMode is how a store deletes only the version of an object a caller
// means. The self-test finds which one the store honours.
type DeleteMode string

const (
	// IfMatchDeletes: DELETE with If-Match, which the store refuses with 412
	// when the key holds another version (AWS S3, S3 Express, versitygw).
	IfMatchDeletes DeleteMode = "conditional"
	// VersionedDeletes: for a store that ignores If-Match on DELETE but keeps
	// versions (MinIO with versioning enabled on the bucket): a delete lists
	// the key's versions, checks the current one, and removes it and the ones
	// under it by version id (DeleteByVersions).
	VersionedDeletes DeleteMode = "versioned"
)

// Version names the version of an object a conditional delete means: its
// ETag, when it was written (zero: at any time) and its version id ("": any,
// or the bucket keeps none).
type Version struct {
	ETag     string
	Modified time.Time
	ID       string
}

// matches reports whether o, the key's current version, is v. A listing
// gives times to the millisecond, GET and HEAD to the second (HTTP dates):
// times compare to the second.
func (v Version) matches(o ObjectVersion) bool {
	if o.ETag != v.ETag {
		return false
	}
	if v.ID != "" {
		return o.ID == v.ID
	}
	return v.Modified.IsZero() || o.Modified.Truncate(time.Second).Equal(v.Modified.Truncate(time.Second))
}

// ObjectVersion is one version of a key on a versioned bucket.
type ObjectVersion struct {
	ID       string
	ETag     string
	Modified time.Time
	// Marker: a delete marker, which hides the versions under it.
	Marker bool
}

// versionedStore is what DeleteByVersions needs of a store.
type versionedStore interface {
	Versions(ctx context.Context, key string) ([]ObjectVersion, error)
	DeleteVersions(ctx context.Context, key string, ids []string) error
	Head(ctx context.Context, key string) (Object, error)
}

// DeleteByVersions is a conditional delete made of requests that name
// versions, with the answers of DELETE with If-Match: nil when key's current
// version was v (v.ETag "": any) and is now gone, or key was gone already;
// ErrPrecondition when key holds another version; ErrUnknown when the
// delete landed but whether a newer version was written meanwhile could not
// be learnt (a repeat tells).
//
// It lists key's versions; the current one must be v. The versions under it
// go first — deleting the current version would otherwise bring back the one
// below it, a spec or lease that was replaced long ago — then the current
// one, by its id: a version written after the listing is never touched, and
// the key is then gone, or holds that newer version (ErrPrecondition, as a
// DELETE with If-Match would have answered had it come after that write).
// Every request is idempotent, so a repeat after a lost answer is harmless.
func DeleteByVersions(ctx context.Context, s versionedStore, key string, v Version) error {
	vs, err := s.Versions(ctx, key)
	if err != nil {
		return err
	}
	if len(vs) == 0 || vs[0].Marker {
		return nil // gone
	}
	cur := vs[0]
	if v.ETag != "" && !v.matches(cur) {
		return fmt.Errorf("s3: delete %s: current version %s (ETag %s), not %s: %w", key, cur.ID, cur.ETag, v.ETag, ErrPrecondition)
	}
	if len(vs) > 1 {
		older := make([]string, 0, len(vs)-1)
		for _, o := range vs[1:] {
			older = append(older, o.ID)
		}
		if err := s.DeleteVersions(ctx, key, older); err != nil {
			return err
		}
	}
	if err := s.DeleteVersions(ctx, key, []string{cur.ID}); err != nil {
		return err
	}
	if v.ETag == "" {
		return nil // any version: one written since came after the delete
	}
	o, err := s.Head(ctx, key)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("s3: delete %s: deleted version %s; whether a newer one is there: %w: %w", key, cur.ID, ErrUnknown, err)
	}
	return fmt.Errorf("s3: delete %s: deleted version %s, but version %s was written meanwhile: %w", key, cur.ID, o.VersionID, ErrPrecondition)
}

// PruneEvery is how many replacing writes (PUT If-Match) of one key a store
// in VersionedDeletes makes before it removes the key's replaced versions: a
// lease renewed for hours, or the recovery marker moved once a ttl, would
// otherwise keep every version until it is deleted — or forever — and run
// into a store's cap on versions per object. It costs 2 requests (a listing
// and a delete) per PruneEvery writes.
const PruneEvery = 16

// PruneReplaced removes every version of key under the current one. Those
// are never current again, so removing them cannot touch a live version,
// whatever is written meanwhile.
func PruneReplaced(ctx context.Context, s versionedStore, key string) error {
	vs, err := s.Versions(ctx, key)
	if err != nil || len(vs) < 2 {
		return err
	}
	ids := make([]string, 0, len(vs)-1)
	for _, v := range vs[1:] {
		ids = append(ids, v.ID)
	}
	return s.DeleteVersions(ctx, key, ids)
}

// replacements counts, per key, the replacing writes a store made since it
// last pruned the key's versions.
type replacements struct {
	mu sync.Mutex
	n  map[string]int
}

// due counts a replacing write of key and reports whether its replaced
// versions are due to be pruned.
func (r *replacements) due(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[string]int{}
	}
	r.n[key]++
	if r.n[key] < PruneEvery {
		return false
	}
	delete(r.n, key)
	return true
}

// forget drops key's count: it was deleted.
func (r *replacements) forget(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.n, key)
}

// ErrVersioningOff: the store is used with VersionedDeletes but a write got
// no version id of its own, so the bucket stopped keeping versions
// (versioning suspended). A delete by version id could then remove a newer
// write that replaced the version in place: deletes wait, reported unknown,
// until versioning is enabled again.
var ErrVersioningOff = errors.New("the bucket no longer keeps versions (versioning suspended?): deletes wait until it is enabled again")

// SetDeleteMode sets how the store's conditional deletes work; the default
// is IfMatchDeletes. Set it before the store is shared.
func (s *Store) SetDeleteMode(m DeleteMode) { s.versioned.Store(m == VersionedDeletes) }

// wrote notes, in VersionedDeletes, what the answer to a write of key says:
// its version id (none, or "null": versioning is off), and, for a replacing
// write, whether key's replaced versions are due to be pruned.
func (s *Store) wrote(ctx context.Context, key, versionID string, replacing bool) {
	if !s.versioned.Load() {
		return
	}
	s.unversioned.Store(versionID == "" || versionID == "null")
	if replacing && s.replaced.due(key) {
		_ = PruneReplaced(ctx, s, key) // best effort: the next prune, or the key's delete, catches up
	}
}

// Versions lists key's versions, delete markers included, the current one
// first (one ListObjectVersions request a page). A bucket that keeps no versions lists
// each key's one version with the id "null".
func (s *Store) Versions(ctx context.Context, key string) ([]ObjectVersion, error) {
	in := &s3.ListObjectVersionsInput{Bucket: &s.bucket, Prefix: &key}
	var out []ObjectVersion
	for {
		var page *s3.ListObjectVersionsOutput
		_, err := s.do(ctx, key, func(ctx context.Context) (err error) {
			page, err = s.client.ListObjectVersions(ctx, in, s.expiring(false))
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("s3: list versions %s: %w", key, mapError(err))
		}
		// Versions and delete markers come in two lists; which one is current
		// the store says (IsLatest), and the order of the rest never matters.
		for _, o := range page.Versions {
			if aws.ToString(o.Key) == key {
				out = appendVersion(out, aws.ToBool(o.IsLatest),
					ObjectVersion{ID: aws.ToString(o.VersionId), ETag: aws.ToString(o.ETag), Modified: aws.ToTime(o.LastModified)})
			}
		}
		for _, m := range page.DeleteMarkers {
			if aws.ToString(m.Key) == key {
				out = appendVersion(out, aws.ToBool(m.IsLatest),
					ObjectVersion{ID: aws.ToString(m.VersionId), Modified: aws.ToTime(m.LastModified), Marker: true})
			}
		}
		last := aws.ToString(page.NextKeyMarker)
		if !aws.ToBool(page.IsTruncated) || last == "" || last > key && !strings.HasPrefix(last, key) {
			break
		}
		in.KeyMarker, in.VersionIdMarker = page.NextKeyMarker, page.NextVersionIdMarker
	}
	return out, nil
}

// appendVersion adds v to vs, first if it is the current version.
func appendVersion(vs []ObjectVersion, latest bool, v ObjectVersion) []ObjectVersion {
	if latest {
		return append([]ObjectVersion{v}, vs...)
	}
	return append(vs, v)
}

// maxBatch is the most keys one DeleteObjects request may name (S3, MinIO).
const maxBatch = 1000

// DeleteVersions removes the versions ids of key: one DELETE for one
// version, DeleteObjects requests of up to 1,000 for several. A version
// already gone is not an error.
func (s *Store) DeleteVersions(ctx context.Context, key string, ids []string) error {
	if len(ids) == 1 {
		unsure, err := s.do(ctx, key, func(ctx context.Context) error {
			_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: &key, VersionId: &ids[0]}, s.expiring(true))
			return err
		})
		if err != nil && !errors.Is(mapError(err), ErrNotFound) {
			return fmt.Errorf("s3: delete %s version %s: %w", key, ids[0], versionErr(err, unsure))
		}
		return nil
	}
	for batch := range slices.Chunk(ids, maxBatch) {
		objs := make([]types.ObjectIdentifier, len(batch))
		for i := range batch {
			objs[i] = types.ObjectIdentifier{Key: &key, VersionId: &batch[i]}
		}
		in := &s3.DeleteObjectsInput{Bucket: &s.bucket, Delete: &types.Delete{Objects: objs, Quiet: aws.Bool(true)}}
		unsure, err := s.do(ctx, key, func(ctx context.Context) error {
			out, err := s.client.DeleteObjects(ctx, in, s.expiring(true))
			if err != nil {
				return err
			}
			for _, e := range out.Errors {
				if code := aws.ToString(e.Code); code != "NoSuchVersion" && code != "NoSuchKey" {
					return fmt.Errorf("version %s: %s: %s", aws.ToString(e.VersionId), code, aws.ToString(e.Message))
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("s3: delete %d versions of %s: %w", len(batch), key, versionErr(err, unsure))
		}
	}
	return nil
}

// versionErr maps the error of a delete by version id: one that got no
// definite answer, or followed an attempt that may have landed, is unknown
// (a repeat is harmless).
func versionErr(err error, unsure bool) error {
	err = mapError(err)
	if unsure || classify(err) != done && !errors.Is(err, ErrExpired) {
		return fmt.Errorf("%w: %w", ErrUnknown, err)
	}
	return err
}
