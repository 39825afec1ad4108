package config

import "strings"

// MaxNodeID bounds the node id, which every claim, lease and log line carries.
const MaxNodeID = 128

// ValidNodeID reports whether s may be a node id: printable ASCII without
// spaces. It travels in x-amz-meta-* headers, where net/http refuses control
// characters (every claim would fail), and in every log line.
func ValidNodeID(s string) bool {
	if s == "" || len(s) > MaxNodeID {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// SanitizeNodeID makes a valid node id of a hostname: each character a node
// id may not hold becomes '-', so a non-ASCII hostname still gives a default.
func SanitizeNodeID(host string) string {
	var b strings.Builder
	for _, r := range host {
		if r <= ' ' || r > '~' {
			r = '-'
		}
		b.WriteRune(r)
	}
	s := b.String()
	if len(s) > MaxNodeID {
		s = s[:MaxNodeID]
	}
	if s == "" {
		s = "-"
	}
	return s
}
