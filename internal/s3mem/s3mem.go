// Package s3mem is an S3 bucket in memory with the semantics fleetd relies on:
// MD5 ETags, conditional PUT and DELETE, COPY with a source condition,
// DeleteObjects, LastModified and the response Date to the second, LIST in
// key order a page at a time, strong consistency. Its errors wrap the same
// sentinels as *store.Store, so code written against the real store runs on
// it unchanged: the simulator's fleet, and unit tests that need a bucket.
//
// Every object write gets a version number of the store's own: an ETag says
// which bytes an object holds, the version which write put them there, and
// the simulator needs to tell identical writes apart. With Quirks.Versioning
// the bucket also keeps the versions a write or DELETE replaced, as a bucket
// with versioning enabled does, and names each by its number: GET and HEAD
// say it, ListObjectVersions lists them and DELETE with a version id removes
// exactly one.
//
// Time is time.Now, so inside a testing/synctest bubble it is virtual.
package s3mem

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// Quirks switches on behaviours of S3-compatible stores that differ from AWS.
type Quirks struct {
	// IgnoreDeleteIfMatch deletes whatever the key holds, whatever If-Match
	// says (MinIO, measured).
	IgnoreDeleteIfMatch bool
	// Versioning: the bucket keeps replaced versions (versioning enabled); a
	// DELETE without a version id writes a delete marker over the key.
	Versioning bool
	// PageSize is the number of keys per LIST page; 0 means S3's 1,000.
	PageSize int
}

type object struct {
	body     []byte
	etag     string
	meta     map[string]string
	modified time.Time // to the second, as HTTP dates say it
	listed   time.Time // to the millisecond, as listings say it
	version  int64
	marker   bool // a delete marker (Versioning)
}

// Store is one bucket. The zero value is not usable; call New.
type Store struct {
	quirks Quirks

	mu   sync.Mutex
	objs map[string]*object // each key's current version, if not a marker
	// older holds, with Versioning, each key's replaced versions and delete
	// markers, oldest first; the last is current when objs has none.
	older   map[string][]*object
	version int64 // of the last write

	versioned atomic.Bool // SetDeleteMode
}

// New returns an empty bucket with quirks.
func New(quirks Quirks) *Store {
	if quirks.PageSize <= 0 {
		quirks.PageSize = 1000
	}
	return &Store{quirks: quirks, objs: map[string]*object{}, older: map[string][]*object{}}
}

// ETag is the ETag S3 gives an object written whole with body: its MD5 in
// hex, quoted, as the SDK returns it.
func ETag(body []byte) string {
	sum := md5.Sum(body)
	return `"` + hex.EncodeToString(sum[:]) + `"`
}

// second truncates to the resolution of HTTP dates, which LastModified and
// Date have.
func second(t time.Time) time.Time { return t.UTC().Truncate(time.Second) }

func (s *Store) describe(o *object, key string, now time.Time) store.Object {
	d := store.Object{Key: key, ETag: o.etag, Size: int64(len(o.body)), LastModified: o.modified,
		Metadata: maps.Clone(o.meta), ServerTime: second(now)}
	if s.quirks.Versioning {
		d.VersionID = strconv.FormatInt(o.version, 10)
	}
	return d
}

// Version returns the version of the object key holds now, 0 if none.
func (s *Store) Version(key string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o := s.objs[key]; o != nil {
		return o.version
	}
	return 0
}

// Snapshot is one object as the store holds it, for checks over the whole
// bucket.
type Snapshot struct {
	store.Object
	Version int64
}

// Snapshot returns every object under prefix, in key order, bodies included.
func (s *Store) Snapshot(prefix string) []Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Snapshot
	for _, k := range s.keysLocked(prefix, "") {
		o := s.objs[k]
		d := s.describe(o, k, time.Now())
		d.Body = slices.Clone(o.body)
		out = append(out, Snapshot{Object: d, Version: o.version})
	}
	return out
}

func (s *Store) keysLocked(prefix, after string) []string {
	var keys []string
	for k := range s.objs {
		if strings.HasPrefix(k, prefix) && k > after {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// ListPage returns up to a page of the objects under prefix whose keys sort
// after after, and whether more follow: one ListObjectsV2 request.
func (s *Store) ListPage(prefix, after string) (page store.Page, versions []int64, more bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	keys := s.keysLocked(prefix, after)
	if len(keys) > s.quirks.PageSize {
		keys, more = keys[:s.quirks.PageSize], true
	}
	page = store.Page{Objects: make([]store.Object, 0, len(keys)), ServerTime: second(now)}
	for _, k := range keys {
		o := s.describe(s.objs[k], k, now)
		o.Metadata = nil // LIST does not return metadata
		page.Objects = append(page.Objects, o)
		versions = append(versions, s.objs[k].version)
	}
	return page, versions, more
}

// List calls fn with each page of the keys under prefix, in key order.
func (s *Store) List(ctx context.Context, prefix string, fn func(store.Page) error) error {
	after := ""
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("s3mem: list %s: %w", prefix, err)
		}
		page, _, more := s.ListPage(prefix, after)
		if err := fn(page); err != nil {
			return err
		}
		if !more || len(page.Objects) == 0 {
			return nil
		}
		after = page.Objects[len(page.Objects)-1].Key
	}
}

// Dirs returns the distinct next path segments under prefix, each ending in "/".
func (s *Store) Dirs(ctx context.Context, prefix string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("s3mem: list dirs %s: %w", prefix, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var dirs []string
	for _, k := range s.keysLocked(prefix, "") {
		rest := strings.TrimPrefix(k, prefix)
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			d := prefix + rest[:i+1]
			if len(dirs) == 0 || dirs[len(dirs)-1] != d {
				dirs = append(dirs, d)
			}
		}
	}
	return dirs, nil
}

// GetVersion is Get that also returns the version read (0 on an error).
func (s *Store) GetVersion(key string, limit int64) (store.Object, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.objs[key]
	if o == nil {
		return store.Object{}, 0, fmt.Errorf("s3mem: get %s: %w", key, store.ErrNotFound)
	}
	d := s.describe(o, key, time.Now())
	if d.Size > limit {
		return d, o.version, fmt.Errorf("s3mem: get %s: %d bytes, limit %d: %w", key, d.Size, limit, store.ErrTooLarge)
	}
	d.Body = slices.Clone(o.body)
	return d, o.version, nil
}

// Get reads an object whole; one over limit bytes is described, not read,
// and the error wraps store.ErrTooLarge.
func (s *Store) Get(ctx context.Context, key string, limit int64) (store.Object, error) {
	if err := ctx.Err(); err != nil {
		return store.Object{}, fmt.Errorf("s3mem: get %s: %w", key, err)
	}
	o, _, err := s.GetVersion(key, limit)
	return o, err
}

// HeadVersion is Head that also returns the version described.
func (s *Store) HeadVersion(key string) (store.Object, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.objs[key]
	if o == nil {
		return store.Object{}, 0, fmt.Errorf("s3mem: head %s: %w", key, store.ErrNotFound)
	}
	return s.describe(o, key, time.Now()), o.version, nil
}

// Head describes an object without reading it.
func (s *Store) Head(ctx context.Context, key string) (store.Object, error) {
	if err := ctx.Err(); err != nil {
		return store.Object{}, fmt.Errorf("s3mem: head %s: %w", key, err)
	}
	o, _, err := s.HeadVersion(key)
	return o, err
}

// PutVersion is Put that also returns the version written.
func (s *Store) PutVersion(key string, body []byte, opt store.PutOptions) (string, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.objs[key]
	switch {
	case opt.IfAbsent && cur != nil:
		return "", 0, fmt.Errorf("s3mem: put %s: exists: %w", key, store.ErrPrecondition)
	case opt.IfMatch != "" && cur == nil:
		// S3 answers 404; store.Store reports it as a lost condition.
		return "", 0, fmt.Errorf("s3mem: put %s: %w: key gone: %w", key, store.ErrPrecondition, store.ErrNotFound)
	case opt.IfMatch != "" && cur.etag != opt.IfMatch:
		return "", 0, fmt.Errorf("s3mem: put %s: ETag %s, not %s: %w", key, cur.etag, opt.IfMatch, store.ErrPrecondition)
	}
	return s.writeLocked(key, slices.Clone(body), opt.Metadata, time.Now()), s.version, nil
}

// PutAt writes body to key unconditionally, with LastModified at modified
// rather than now, and returns its ETag: for tests and simulations that need
// an object a stopped writer left long ago. S3 has no such request.
func (s *Store) PutAt(key string, body []byte, meta map[string]string, modified time.Time) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writeLocked(key, slices.Clone(body), meta, modified)
}

func (s *Store) writeLocked(key string, body []byte, meta map[string]string, now time.Time) string {
	s.version++
	o := &object{body: body, etag: ETag(body), meta: lowerKeys(meta), modified: second(now), listed: now.UTC().Truncate(time.Millisecond), version: s.version}
	if cur := s.objs[key]; cur != nil && s.quirks.Versioning {
		s.older[key] = append(s.older[key], cur)
	}
	s.objs[key] = o
	return o.etag
}

// lowerKeys copies metadata as the SDK reads it back: keys lower-cased.
func lowerKeys(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[strings.ToLower(k)] = v
	}
	return out
}

// Put writes body to key and returns its ETag. A failed condition wraps
// store.ErrPrecondition, If-Match on a missing key included.
func (s *Store) Put(ctx context.Context, key string, body []byte, opt store.PutOptions) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("s3mem: put %s: %w", key, err)
	}
	etag, _, err := s.PutVersion(key, body, opt)
	return etag, err
}

// CopyVersion is Copy that also returns the version written.
func (s *Store) CopyVersion(src, dst string, opt store.CopyOptions) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.objs[src]
	switch {
	case o == nil:
		return 0, fmt.Errorf("s3mem: copy %s to %s: %w", src, dst, store.ErrNotFound)
	case opt.SourceIfMatch != "" && o.etag != opt.SourceIfMatch:
		return 0, fmt.Errorf("s3mem: copy %s to %s: source ETag %s, not %s: %w", src, dst, o.etag, opt.SourceIfMatch, store.ErrPrecondition)
	}
	s.writeLocked(dst, o.body, opt.Metadata, time.Now()) // bodies are never changed in place: sharing is safe
	return s.version, nil
}

// Copy copies src to dst, replacing the metadata with opt's.
func (s *Store) Copy(ctx context.Context, src, dst string, opt store.CopyOptions) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("s3mem: copy %s to %s: %w", src, dst, err)
	}
	_, err := s.CopyVersion(src, dst, opt)
	return err
}

// DeleteVersion is Delete that also returns the version it removed (0 if
// none).
func (s *Store) DeleteVersion(key, ifMatch string) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.objs[key]
	switch {
	case o == nil:
		return 0, nil // AWS 404, versitygw 204: both mean gone
	case ifMatch != "" && o.etag != ifMatch && !s.quirks.IgnoreDeleteIfMatch:
		return 0, fmt.Errorf("s3mem: delete %s: ETag %s, not %s: %w", key, o.etag, ifMatch, store.ErrPrecondition)
	}
	delete(s.objs, key)
	if s.quirks.Versioning {
		s.version++
		now := time.Now()
		s.older[key] = append(s.older[key], o, &object{modified: second(now), listed: now.UTC().Truncate(time.Millisecond), version: s.version, marker: true})
	}
	return o.version, nil
}

// SetDeleteMode sets how the store's conditional deletes work, as
// store.Store.SetDeleteMode: with store.VersionedDeletes they are made of
// requests that name versions (store.DeleteByVersions).
func (s *Store) SetDeleteMode(m store.DeleteMode) { s.versioned.Store(m == store.VersionedDeletes) }

// DeleteWritten deletes version v of key. This store answers every request,
// so no attempt's outcome is ever in doubt (see store.Store.DeleteWritten).
func (s *Store) DeleteWritten(ctx context.Context, key string, v store.Version) error {
	if s.versioned.Load() {
		return store.DeleteByVersions(ctx, s, key, v)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("s3mem: delete %s: %w", key, err)
	}
	_, err := s.DeleteVersion(key, v.ETag)
	return err
}

// Delete removes key if its ETag is ifMatch (any version when ifMatch is "").
// A key already gone is not an error; another version wraps
// store.ErrPrecondition.
func (s *Store) Delete(ctx context.Context, key, ifMatch string) error {
	return s.DeleteWritten(ctx, key, store.Version{ETag: ifMatch})
}

// Versions lists key's versions, the current one first (one
// ListObjectVersions request). Without Versioning the one version is listed
// with the id "null", as S3 does.
func (s *Store) Versions(ctx context.Context, key string) ([]store.ObjectVersion, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("s3mem: list versions %s: %w", key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []store.ObjectVersion
	if o := s.objs[key]; o != nil {
		v := o.describeVersion()
		if !s.quirks.Versioning {
			v.ID = "null"
		}
		out = append(out, v)
	}
	older := s.older[key]
	for i := len(older) - 1; i >= 0; i-- {
		out = append(out, older[i].describeVersion())
	}
	return out, nil
}

func (o *object) describeVersion() store.ObjectVersion {
	return store.ObjectVersion{ID: strconv.FormatInt(o.version, 10), ETag: o.etag, Modified: o.listed, Marker: o.marker}
}

// DeleteVersions removes the versions ids of key (DELETE with a version id,
// or DeleteObjects); a version already gone is not an error.
func (s *Store) DeleteVersions(ctx context.Context, key string, ids []string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("s3mem: delete %s versions %v: %w", key, ids, err)
	}
	for _, id := range ids {
		s.DeleteVersionID(key, id)
	}
	return nil
}

// DeleteVersionID removes version id of key and returns the version number
// removed (0 if none) and whether it was the current one; the newest version
// under it is then current, as on S3.
func (s *Store) DeleteVersionID(key, id string) (v int64, current bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o := s.objs[key]; o != nil && (strconv.FormatInt(o.version, 10) == id || id == "null" && !s.quirks.Versioning) {
		delete(s.objs, key)
		if older := s.older[key]; len(older) > 0 && !older[len(older)-1].marker {
			s.objs[key], s.older[key] = older[len(older)-1], older[:len(older)-1]
		}
		return o.version, true
	}
	older := s.older[key]
	for i, o := range older {
		if strconv.FormatInt(o.version, 10) == id {
			current = i == len(older)-1 && s.objs[key] == nil
			s.older[key] = slices.Delete(slices.Clone(older), i, i+1)
			if i == len(older)-1 && o.marker {
				// The current delete marker went: the version under it is back.
				if n := len(s.older[key]); n > 0 && !s.older[key][n-1].marker {
					s.objs[key], s.older[key] = s.older[key][n-1], s.older[key][:n-1]
				}
			}
			if len(s.older[key]) == 0 {
				delete(s.older, key)
			}
			return o.version, current
		}
	}
	return 0, false
}
