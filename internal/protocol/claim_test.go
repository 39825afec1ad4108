package protocol

import "testing"

// TestPriorAttempts: a submitter can set the attempt count; whatever it says,
// the spec gets at least one run and never more than the maximum.
func TestPriorAttempts(t *testing.T) {
	tests := []struct {
		meta string
		max  int
		want int
	}{
		{"", 3, 0},
		{"0", 3, 0},
		{"1", 3, 1},
		{"2", 3, 2},
		{"3", 3, 2},
		{"999999", 3, 2},
		{"99999999999999999999999", 3, 0}, // overflows: not a count
		{"-5", 3, 0},
		{"abc", 3, 0},
		{" 1", 3, 0},
		{"5", 1, 0},
	}
	for _, tt := range tests {
		meta := map[string]string{metaAttempts: tt.meta}
		if tt.meta == "" {
			meta = nil
		}
		if got := PriorAttempts(meta, tt.max); got != tt.want {
			t.Errorf("PriorAttempts(%q, max %d) = %d, want %d", tt.meta, tt.max, got, tt.want)
		}
	}
}
