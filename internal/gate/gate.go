// Package gate is the placement gate: which runner may take which spec.
package gate

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Fields are the part of an ExecutionCell spec fleetd reads. Everything else is
// passed to the supervisor as it is.
type Fields struct {
	ID     string
	PoolID string
}

// ErrInvalid is wrapped by Parse for bytes that are not a JSON object.
var ErrInvalid = errors.New("invalid spec")

// Parse reads the spec view from raw spec bytes. The bytes must be a JSON
// object; "spec", "spec.id" and "spec.placement.poolId" are optional, as 0.5.1
// accepted specs without them, but must have the right types when present.
func Parse(raw []byte) (Fields, error) {
	var doc struct {
		Spec *struct {
			ID        string `json:"id"`
			Placement *struct {
				PoolID string `json:"poolId"`
			} `json:"placement"`
		} `json:"spec"`
	}
	var probe any
	if err := json.Unmarshal(raw, &probe); err != nil {
		return Fields{}, fmt.Errorf("%w: not JSON: %v", ErrInvalid, err)
	}
	if _, ok := probe.(map[string]any); !ok {
		return Fields{}, fmt.Errorf("%w: not a JSON object", ErrInvalid)
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return Fields{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	var s Fields
	if doc.Spec != nil {
		s.ID = doc.Spec.ID
		if doc.Spec.Placement != nil {
			s.PoolID = strings.TrimSpace(doc.Spec.Placement.PoolID)
		}
	}
	return s, nil
}

// Accepts reports whether a runner in pool runnerPool may take spec: a runner
// with no pool takes every spec, a spec with no pool goes to every runner, and
// otherwise the two must be equal.
func Accepts(runnerPool string, spec Fields) bool {
	return runnerPool == "" || spec.PoolID == "" || runnerPool == spec.PoolID
}
