package store

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"time"
)

// DelayedDirName is the directory under pending/ that holds specs not to run
// before a time. It sits inside pending/ so that the poll's one listing of
// pending/ sees them: a delayed spec costs no request until it is due. It
// sorts before ids that start with a letter or digit (and after PauseKey), so
// it is on the listing's first pages; keys in a subdirectory are not work to
// the claim, nor to cellos-fleet 0.5.1.
const DelayedDirName = ".delayed"

// DueLayout is how a due time is written in a delayed key: UTC, to the
// millisecond, so that delayed keys sort by due time. A key written by hand
// may leave out the milliseconds (DueLayoutSeconds).
const (
	DueLayout        = "20060102T150405.000Z"
	DueLayoutSeconds = "20060102T150405Z"
)

// ErrNotDelayed: a key is not pending/.delayed/<due>/<id>.json.
var ErrNotDelayed = errors.New("not a delayed spec key")

// DelayedDir returns the key prefix of the delayed specs, ending in "/".
func (l Layout) DelayedDir() string { return l.Dir(Pending) + DelayedDirName + "/" }

// DelayedKey returns the key of spec id delayed until due:
// {lane}/pending/.delayed/<due UTC>/<id>.json.
func (l Layout) DelayedKey(id string, due time.Time) string {
	return l.DelayedDir() + FormatDue(due) + "/" + id + ".json"
}

// FormatDue writes a due time as delayed keys hold it.
func FormatDue(t time.Time) string { return t.UTC().Format(DueLayout) }

// ParseDue reads a due time as delayed keys hold it, with or without
// milliseconds.
func ParseDue(s string) (time.Time, error) {
	if t, err := time.Parse(DueLayout, s); err == nil {
		return t, nil
	}
	t, err := time.Parse(DueLayoutSeconds, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("due time %q: want %s or %s (UTC)", s, DueLayoutSeconds, DueLayout)
	}
	return t, nil
}

// ParseDelayed returns the spec id and the due time of a delayed key.
func (l Layout) ParseDelayed(key string) (id string, due time.Time, err error) {
	rest, found := strings.CutPrefix(key, l.DelayedDir())
	if !found {
		return "", time.Time{}, fmt.Errorf("%s: %w: outside %s", key, ErrNotDelayed, l.DelayedDir())
	}
	when, name, ok := strings.Cut(rest, "/")
	if !ok || strings.Contains(name, "/") || path.Ext(name) != ".json" {
		return "", time.Time{}, fmt.Errorf("%s: %w: want %s<due>/<id>.json", key, ErrNotDelayed, l.DelayedDir())
	}
	due, err = ParseDue(when)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("%s: %w: %w", key, ErrNotDelayed, err)
	}
	id = strings.TrimSuffix(name, ".json")
	if err := l.CheckID(id); err != nil {
		return "", time.Time{}, fmt.Errorf("%s: %w", key, err)
	}
	if n := len(l.DelayedKey(id, due)); n > MaxKeyBytes {
		return "", time.Time{}, fmt.Errorf("%s: %w: its key would be %d bytes", key, ErrIDTooLong, n)
	}
	return id, due, nil
}
