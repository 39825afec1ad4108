package metrics

import (
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func value(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestS3ErrorsCountOnlyWhatPagesAnOperator(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status  int
		isError bool
	}{
		{0, true}, // no response
		{200, false},
		{204, false},
		{304, false},
		{400, true},
		{403, true},
		{404, false}, // key gone: normal
		{409, false}, // concurrent conditional write: retried
		{412, false}, // conditional write lost: normal
		{429, true},
		{500, true},
		{503, true},
	}
	m := New(1, "v", "r")
	for _, tt := range tests {
		code := "none"
		if tt.status != 0 {
			code = strconv.Itoa(tt.status)
		}
		m.S3Request("PutObject", tt.status, time.Millisecond)
		if got := value(t, m.s3Requests.WithLabelValues("PutObject", code)); got != 1 {
			t.Errorf("status %d: fleetd_s3_requests_total = %v, want 1", tt.status, got)
		}
		want := 0.0
		if tt.isError {
			want = 1
		}
		if got := value(t, m.s3Errors.WithLabelValues("PutObject", code)); got != want {
			t.Errorf("status %d: fleetd_s3_errors_total = %v, want %v", tt.status, got, want)
		}
	}
}

func TestOutcomesShownAtZeroFromTheStart(t *testing.T) {
	t.Parallel()
	m := New(1, "v", "r", "done", "broke")
	families, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "fleetd_cells_finished_total" {
			continue
		}
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				got[l.GetValue()] = s.GetCounter().GetValue()
			}
		}
	}
	if len(got) != 2 || got["done"] != 0 || got["broke"] != 0 {
		t.Errorf("fleetd_cells_finished_total series %v, want done and broke at 0", got)
	}
}
