// Package queue is fleetd's S3 work queue: the 0.5.1 key layout and the object
// operations the claim protocol needs, with S3 errors mapped to sentinels.
package store

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// Area is a directory of the queue layout.
type Area string

// The queue's directories. Pending, Claimed, Completed and Failed are 0.5.1's;
// Leases is fleetd's addition for crash recovery.
const (
	Pending   Area = "pending"
	Claimed   Area = "claimed"
	Completed Area = "completed"
	Failed    Area = "failed"
	Leases    Area = "leases"
	// Sessions holds one object per agent process: its liveness, which
	// every lease it holds relies on (docs/PROTOCOL.md, "Sessions").
	Sessions Area = "sessions"
	// Output holds each finished spec's last output, <id>.txt: written with
	// its result, removed with it.
	Output Area = "output"
)

// Layout maps spec ids to keys exactly as cellos-fleet 0.5.1 did:
// {prefix}[/{queue}]/{state}/{id}.json.
type Layout struct {
	base string
}

// NewLayout returns the layout for a prefix and an optional queue lane. A trailing
// "/" on the prefix is trimmed and the queue name is trimmed of spaces, as in 0.5.1.
func NewLayout(prefix, queueName string) Layout {
	base := strings.TrimRight(prefix, "/")
	if q := strings.TrimSpace(queueName); q != "" {
		if base == "" {
			base = q
		} else {
			base = base + "/" + q
		}
	}
	return Layout{base: base}
}

// Dir returns the key prefix of a state, ending in "/".
func (l Layout) Dir(s Area) string {
	if l.base == "" {
		return string(s) + "/"
	}
	return l.base + "/" + string(s) + "/"
}

// Key returns the key of spec id in state s.
func (l Layout) Key(s Area, id string) string {
	return l.Dir(s) + id + ".json"
}

// OutputKey returns the key of spec id's output: {dir}/output/<id>.txt. It is
// shorter than the id's result key, so an id CheckID accepts fits.
func (l Layout) OutputKey(id string) string {
	return l.Dir(Output) + id + ".txt"
}

// PauseKey is the key whose presence pauses the lane. It sits in pending/,
// where every agent lists anyway (so pausing costs no request), and sorts
// before any id that starts with a letter or digit, so it is seen on the first
// page, before the work it holds back. It does not end in .json: not work.
func (l Layout) PauseKey() string { return l.Dir(Pending) + "!paused" }

// Base is the key prefix of the lane: {prefix}[/{queue}].
func (l Layout) Base() string { return l.base }

// MaxKeyBytes is the longest key S3 accepts, in bytes.
const MaxKeyBytes = 1024

// areas are the directories an id gets a key in.
var areas = []Area{Pending, Claimed, Completed, Failed, Leases}

// Why a key or an id is not work. Callers test them with errors.Is.
var (
	// ErrNotWork: the key is not <dir>/<id>.json: outside the directory, in
	// a subdirectory, not ending in ".json", or with an empty id.
	ErrNotWork = errors.New("not <id>.json")
	// ErrIDTooLong: one of the id's keys would be longer than S3 allows, so
	// some step of the protocol (the result, say) could never be written.
	ErrIDTooLong = errors.New("id too long")
)

// CheckID returns an error wrapping ErrNotWork or ErrIDTooLong when id cannot
// be a spec id under l.
func (l Layout) CheckID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty id", ErrNotWork)
	case strings.Contains(id, "/"):
		return fmt.Errorf("%w: the id holds a /", ErrNotWork)
	}
	for _, s := range areas {
		if n := len(l.Key(s, id)); n > MaxKeyBytes {
			return fmt.Errorf("%w: its %s/ key would be %d bytes, over S3's limit of %d", ErrIDTooLong, s, n, MaxKeyBytes)
		}
	}
	return nil
}

// ParseID returns the spec id of a key in state s, or an error saying why the
// key is not work (see CheckID).
func (l Layout) ParseID(s Area, key string) (string, error) {
	name, found := strings.CutPrefix(key, l.Dir(s))
	switch {
	case !found:
		return "", fmt.Errorf("%w: outside %s", ErrNotWork, l.Dir(s))
	case strings.Contains(name, "/"):
		return "", fmt.Errorf("%w: in a subdirectory", ErrNotWork)
	case path.Ext(name) != ".json":
		return "", fmt.Errorf("%w: no .json suffix", ErrNotWork)
	}
	id := strings.TrimSuffix(name, ".json")
	if err := l.CheckID(id); err != nil {
		return "", err
	}
	return id, nil
}

// ID returns the spec id of a key in state s. ok is false for keys that are not
// work: outside the directory, not ending in ".json", empty, in a
// subdirectory, or with an id too long for every key of it to fit in S3.
func (l Layout) ID(s Area, key string) (id string, ok bool) {
	id, err := l.ParseID(s, key)
	return id, err == nil
}
