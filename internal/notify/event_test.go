package notify

import (
	"strings"
	"testing"
)

// rec is a one-record event as versitygw v1.8.0 publishes it.
func rec(event, bucket, key string) string {
	return `{"Records":[{"eventVersion":"2.2","eventSource":"aws:s3","eventName":"` + event +
		`","s3":{"bucket":{"name":"` + bucket + `"},"object":{"key":"` + key + `","size":12,"eTag":"x","sequencer":"1"}}}]}`
}

func TestRead(t *testing.T) {
	raw := filter{bucket: "b", dir: "fleet/q/pending/"}
	enc := filter{bucket: "b", dir: "fleet/q/pending/", urlKeys: true}
	tests := []struct {
		name       string
		f          filter
		msg        string
		key, their string
	}{
		{"put", raw, rec("s3:ObjectCreated:Put", "b", "fleet/q/pending/a.json"), "fleet/q/pending/a.json", ResultHint},
		{"copy", raw, rec("s3:ObjectCreated:Copy", "b", "fleet/q/pending/a.json"), "fleet/q/pending/a.json", ResultHint},
		{"raw key kept as is", raw, rec("s3:ObjectCreated:Put", "b", "fleet/q/pending/a+b%20.json"), "fleet/q/pending/a+b%20.json", ResultHint},
		{"url key decoded", enc, rec("s3:ObjectCreated:Put", "b", "fleet/q/pending/a+b%2B.json"), "fleet/q/pending/a b+.json", ResultHint},
		{"url key undecodable", enc, rec("s3:ObjectCreated:Put", "b", "fleet/q/pending/%zz.json"), "", ResultDropped},
		{"a spec's removal is a claim", raw, rec("s3:ObjectRemoved:Delete", "b", "fleet/q/pending/a.json"), "", ResultIgnored},
		{"the pause marker's removal is resume", raw, rec("s3:ObjectRemoved:Delete", "b", "fleet/q/pending/!paused"), "fleet/q/pending/!paused", ResultHint},
		{"other lane", raw, rec("s3:ObjectCreated:Put", "b", "fleet/r/pending/a.json"), "", ResultIgnored},
		{"claimed/", raw, rec("s3:ObjectCreated:Put", "b", "fleet/q/claimed/a.json"), "", ResultIgnored},
		{"test event", raw, `{"Service":"S3","Event":"s3:TestEvent","Time":"2026-12-06T16:00:00Z","Bucket":"b"}`, "", ResultIgnored},
		{"other bucket", raw, rec("s3:ObjectCreated:Put", "c", "fleet/q/pending/a.json"), "", ResultDropped},
		{"garbled", raw, `{"Records":[{`, "", ResultDropped},
		{"not JSON", raw, "hello", "", ResultDropped},
		{"no records", raw, `{"Records":[]}`, "", ResultDropped},
		{"two records", raw, `{"Records":[` + strings.Repeat(`{"eventName":"s3:ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"fleet/q/pending/a.json"}}},`, 1) +
			`{"eventName":"s3:ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"fleet/q/pending/b.json"}}}]}`, "", ResultDropped},
		{"empty key", raw, rec("s3:ObjectCreated:Put", "b", ""), "", ResultDropped},
		{"oversized", raw, rec("s3:ObjectCreated:Put", "b", "fleet/q/pending/"+strings.Repeat("a", maxEvent)+".json"), "", ResultDropped},
	}
	for _, tt := range tests {
		key, result := tt.f.read([]byte(tt.msg))
		if key != tt.key || result != tt.their {
			t.Errorf("%s: read = %q, %s; want %q, %s", tt.name, key, result, tt.key, tt.their)
		}
	}
}

func TestRedact(t *testing.T) {
	got := Redact("nats://user:hunter2@127.0.0.1:4222,tls://s3cr3t@h:1,nats://h:2")
	if strings.Contains(got, "hunter2") || strings.Contains(got, "s3cr3t") || strings.Contains(got, "user") || !strings.Contains(got, "nats://h:2") {
		t.Errorf("Redact = %q", got)
	}
}
