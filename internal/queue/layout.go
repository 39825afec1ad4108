// Package queue is fleetd's S3 work queue: the 0.5.1 key layout and the object
// operations the claim protocol needs, with S3 errors mapped to sentinels.
package queue

import (
	"path"
	"strings"
)

// State is a directory of the queue layout.
type State string

// The queue's directories. Pending, Claimed, Completed and Failed are 0.5.1's;
// Leases is fleetd's addition for crash recovery.
const (
	Pending   State = "pending"
	Claimed   State = "claimed"
	Completed State = "completed"
	Failed    State = "failed"
	Leases    State = "leases"
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
func (l Layout) Dir(s State) string {
	if l.base == "" {
		return string(s) + "/"
	}
	return l.base + "/" + string(s) + "/"
}

// Key returns the key of spec id in state s.
func (l Layout) Key(s State, id string) string {
	return l.Dir(s) + id + ".json"
}

// ID returns the spec id of a key in state s. ok is false for keys that are not
// work: outside the directory, not ending in ".json", empty, or in a subdirectory.
func (l Layout) ID(s State, key string) (id string, ok bool) {
	name, found := strings.CutPrefix(key, l.Dir(s))
	if !found || strings.Contains(name, "/") || path.Ext(name) != ".json" {
		return "", false
	}
	id = strings.TrimSuffix(name, ".json")
	return id, id != ""
}
