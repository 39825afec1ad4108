package ops

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"
)

func TestHeartbeatLogsOneEventAtOnce(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // Heartbeat still logs its first beat, then returns
	Heartbeat(ctx, HeartbeatConfig{Interval: time.Hour, Bucket: "b", Prefix: "fleet", QueueName: "q", Pool: "p",
		Concurrency: 4, InFlight: func() int { return 2 }, Logger: slog.New(slog.NewJSONHandler(&buf, nil))})
	var ev struct {
		EventType   string `json:"event_type"`
		Bucket      string `json:"bucket"`
		Prefix      string `json:"prefix"`
		QueueName   string `json:"queue_name"`
		PoolID      string `json:"pool_id"`
		InFlight    int    `json:"in_flight"`
		Concurrency int    `json:"concurrency"`
	}
	lines := bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n"))
	if len(lines) != 1 {
		t.Fatalf("%d log lines, want 1:\n%s", len(lines), buf.String())
	}
	if err := json.Unmarshal(lines[0], &ev); err != nil {
		t.Fatal(err)
	}
	want := struct {
		EventType   string `json:"event_type"`
		Bucket      string `json:"bucket"`
		Prefix      string `json:"prefix"`
		QueueName   string `json:"queue_name"`
		PoolID      string `json:"pool_id"`
		InFlight    int    `json:"in_flight"`
		Concurrency int    `json:"concurrency"`
	}{HeartbeatEventType, "b", "fleet", "q", "p", 2, 4}
	if ev != want {
		t.Errorf("heartbeat %+v, want %+v", ev, want)
	}
}
