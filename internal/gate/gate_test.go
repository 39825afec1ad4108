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
		if got := Accepts(tt.runner, Spec{PoolID: tt.spec}); got != tt.want {
			t.Errorf("Accepts(runner %q, spec %q) = %v, want %v", tt.runner, tt.spec, got, tt.want)
		}
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		want    Spec
		invalid bool
	}{
		{"full", `{"kind":"ExecutionCell","spec":{"id":"a","placement":{"poolId":" gpu "}}}`, Spec{ID: "a", PoolID: "gpu"}, false},
		{"no placement", `{"spec":{"id":"a"}}`, Spec{ID: "a"}, false},
		{"no spec", `{"kind":"ExecutionCell"}`, Spec{}, false},
		{"null placement", `{"spec":{"placement":null}}`, Spec{}, false},
		{"not json", `{"spec":`, Spec{}, true},
		{"array", `[1,2]`, Spec{}, true},
		{"string", `"x"`, Spec{}, true},
		{"pool not a string", `{"spec":{"placement":{"poolId":7}}}`, Spec{}, true},
		{"empty", ``, Spec{}, true},
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
