package gate

import (
	"errors"
	"testing"
)

func TestAccepts(t *testing.T) {
	// The 0.5.1 placement matrix.
	tests := []struct {
		runner, spec string
		want         bool
	}{
		{"", "", true},
		{"", "gpu", true},
		{"gpu", "", true},
		{"gpu", "gpu", true},
		{"gpu", "cpu", false},
		{"cpu", "gpu", false},
	}
	for _, tt := range tests {
		if got := Accepts(tt.runner, Fields{PoolID: tt.spec}); got != tt.want {
			t.Errorf("Accepts(runner %q, spec %q) = %v, want %v", tt.runner, tt.spec, got, tt.want)
		}
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		want    Fields
		invalid bool
	}{
		{"full", `{"kind":"ExecutionCell","spec":{"id":"a","placement":{"poolId":" gpu "}}}`, Fields{ID: "a", PoolID: "gpu"}, false},
		{"no placement", `{"spec":{"id":"a"}}`, Fields{ID: "a"}, false},
		{"no spec", `{"kind":"ExecutionCell"}`, Fields{}, false},
		{"null placement", `{"spec":{"placement":null}}`, Fields{}, false},
		{"not json", `{"spec":`, Fields{}, true},
		{"array", `[1,2]`, Fields{}, true},
		{"string", `"x"`, Fields{}, true},
		{"pool not a string", `{"spec":{"placement":{"poolId":7}}}`, Fields{}, true},
		{"empty", ``, Fields{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.raw))
			if tt.invalid {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("Parse(%q) error = %v, want ErrInvalid", tt.raw, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Parse(%q) = %+v, %v, want %+v", tt.raw, got, err, tt.want)
			}
		})
	}
}
