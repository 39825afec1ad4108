package store

import (
	"context"
	"errors"
	"regexp"
	"testing"

	"github.com/cellos/fleetd/internal/faultproxy"
)

// Each store answer in the table, as the store reads it: what Put and
// Delete return, and whether the request was repeated.
func TestAnswers(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name     string
		method   string
		status   int
		code     string
		want     error // nil: the repeat succeeded
		repeated bool
		refused  bool
		unknown  bool
	}{
		{"AWS conflict: not applied, repeated", "PUT", 409, "ConditionalRequestConflict", nil, true, false, false},
		{"not implemented: definite", "PUT", 501, "NotImplemented", ErrNotImplemented, false, true, false},
		{"precondition: definite", "PUT", 412, "PreconditionFailed", ErrPrecondition, false, false, false},
		{"server error: may have landed, repeated", "PUT", 500, "InternalError", nil, true, false, false},
		{"missing key on DELETE: gone", "DELETE", 404, "NoSuchKey", nil, false, false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			s, p, _ := faultyStore(t)
			key := "answers/k.json"
			var err error
			rule := p.Add(faultproxyRule(tt.method, key, tt.status, tt.code))
			if tt.method == "PUT" {
				_, err = s.Put(ctx, key, []byte("x"), PutOptions{IfAbsent: true})
			} else {
				err = s.Delete(ctx, key, `"00000000000000000000000000000000"`)
			}
			switch {
			case tt.want == nil && err != nil:
				t.Fatalf("err = %v, want success", err)
			case tt.want != nil && !errors.Is(err, tt.want):
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if got := Refused(err); got != tt.refused {
				t.Errorf("Refused = %v, want %v", got, tt.refused)
			}
			if got := errors.Is(err, ErrUnknown); got != tt.unknown {
				t.Errorf("unknown = %v, want %v", got, tt.unknown)
			}
			if rule.Fired() != 1 {
				t.Errorf("fault fired %d times, want 1", rule.Fired())
			}
			if got := p.Requests() > 1; got != tt.repeated {
				t.Errorf("repeated = %v (%d requests), want %v", got, p.Requests(), tt.repeated)
			}
		})
	}
}

func faultproxyRule(method, key string, status int, code string) faultproxy.Rule {
	return faultproxy.Rule{Method: method, Key: regexp.MustCompile("^" + regexp.QuoteMeta(key) + "$"),
		Action: faultproxy.ErrorBefore, Status: status, Code: code, Times: 1}
}
