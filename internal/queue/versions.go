package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
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

// SetDeleteMode sets how the store's conditional deletes work; the default
// is IfMatchDeletes. Set it before the store is shared.
func (s *Store) SetDeleteMode(m DeleteMode) { s.versioned.Store(m == VersionedDeletes) }

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

// DeleteVersions removes the versions ids of key: one DELETE for one
// version, one DeleteObjects request for several. A version already gone is
// not an error.
func (s *Store) DeleteVersions(ctx context.Context, key string, ids []string) error {
	if len(ids) == 1 {
		_, err := s.do(ctx, key, func(ctx context.Context) error {
			_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: &key, VersionId: &ids[0]}, s.expiring(true))
			return err
		})
		if err != nil && !errors.Is(mapError(err), ErrNotFound) {
			return fmt.Errorf("s3: delete %s version %s: %w", key, ids[0], versionErr(err))
		}
		return nil
	}
	objs := make([]types.ObjectIdentifier, len(ids))
	for i := range ids {
		objs[i] = types.ObjectIdentifier{Key: &key, VersionId: &ids[i]}
	}
	in := &s3.DeleteObjectsInput{Bucket: &s.bucket, Delete: &types.Delete{Objects: objs, Quiet: aws.Bool(true)}}
	_, err := s.do(ctx, key, func(ctx context.Context) error {
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
		return fmt.Errorf("s3: delete %s versions %v: %w", key, ids, versionErr(err))
	}
	return nil
}

// versionErr maps the error of a delete by version id: one that got no
// definite answer is unknown (a repeat is harmless).
func versionErr(err error) error {
	err = mapError(err)
	if classify(err) != done && !errors.Is(err, ErrExpired) {
		return fmt.Errorf("%w: %w", ErrUnknown, err)
	}
	return err
}
