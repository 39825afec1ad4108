package ui

import (
	"context"
	"fmt"
	"html/template"
	"strings"
	"sync"
	"time"

	"github.com/cellos/fleetd/internal/queueview"
	"github.com/cellos/fleetd/internal/store"
)

// History is how many specs finished, completed and failed, per minute over
// the last hour and per hour over the last day, by their result objects'
// LastModified on the store's clock (a rerun's result replaces the earlier
// one, so a spec counts once, when it last finished).
type History struct {
	// At is the listing's time on the store's clock: the right edge.
	At time.Time
	// Minutes[i] and Hours[i] are the i-th bucket, oldest first; the last
	// ends at At.
	Minutes [60]Bucket
	Hours   [24]Bucket
	// Listed is the number of results listed; AtLeast: a listing stopped at
	// the limit, so the counts are lower bounds.
	Listed  int
	AtLeast bool
}

// Bucket is one bar of the chart.
type Bucket struct {
	Start     time.Time
	Completed int
	Failed    int
}

// history lists completed/ and failed/ for the chart, at most once per
// every (the chart's finest bucket is a minute), each up to limit keys: one
// LIST per 1,000 results. Only the counts are kept, not the keys.
type history struct {
	store  Store
	layout store.Layout
	limit  int
	every  time.Duration
	now    func() time.Time

	mu     sync.Mutex
	last   *History
	lastAt time.Time // on the UI's clock, for the cache
}

func (h *history) get(ctx context.Context) (*History, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.last != nil && h.now().Sub(h.lastAt) < h.every {
		return h.last, nil
	}
	hist := &History{}
	var stamps [2][]time.Time
	for i, st := range []store.Area{store.Completed, store.Failed} {
		w, err := queueview.Walk(ctx, h.store, h.layout, st, h.limit, func(o store.Object, now time.Time) {
			// Older than a day counts nowhere: not kept.
			if now.Sub(o.LastModified) <= 24*time.Hour {
				stamps[i] = append(stamps[i], o.LastModified)
			}
		}, nil)
		if err != nil {
			return nil, fmt.Errorf("ui: history: %w", err)
		}
		hist.At = later(hist.At, w.ServerTime)
		hist.Listed += w.N
		hist.AtLeast = hist.AtLeast || w.AtLeast
	}
	if hist.At.IsZero() {
		hist.At = h.now()
	}
	end := hist.At.Truncate(time.Minute).Add(time.Minute)
	for i := range hist.Minutes {
		hist.Minutes[i].Start = end.Add(time.Duration(i-len(hist.Minutes)) * time.Minute)
	}
	hourEnd := hist.At.Truncate(time.Hour).Add(time.Hour)
	for i := range hist.Hours {
		hist.Hours[i].Start = hourEnd.Add(time.Duration(i-len(hist.Hours)) * time.Hour)
	}
	for i, ts := range stamps {
		for _, t := range ts {
			if m, ok := bucketOf(end, t, time.Minute, len(hist.Minutes)); ok {
				hist.Minutes[m].add(i == 1)
			}
			if hr, ok := bucketOf(hourEnd, t, time.Hour, len(hist.Hours)); ok {
				hist.Hours[hr].add(i == 1)
			}
		}
	}
	h.last, h.lastAt = hist, h.now()
	return hist, nil
}

// bucketOf is the index of the bucket holding t among n buckets of step
// ending at end: bucket i holds [end-(n-i)·step, end-(n-i-1)·step).
func bucketOf(end, t time.Time, step time.Duration, n int) (int, bool) {
	d := end.Sub(t)
	if d <= 0 {
		return 0, false
	}
	i := n - int((d+step-1)/step)
	return i, i >= 0
}

func (b *Bucket) add(failed bool) {
	if failed {
		b.Failed++
	} else {
		b.Completed++
	}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Chart sizes, in SVG user units.
const (
	chartW, chartH   = 720, 140
	chartPadL        = 40
	chartPadB        = 18
	chartPadT        = 8
	chartLabelFormat = "15:04"
)

// svgChart draws buckets as stacked bars (completed under failed): plain SVG
// the server writes, no script. Everything in it is a number or a time the
// code formats, so it is safe as HTML.
func svgChart(id, title string, buckets []Bucket, step time.Duration) template.HTML {
	peak := 1
	for _, b := range buckets {
		peak = max(peak, b.Completed+b.Failed)
	}
	var s strings.Builder
	plotW, plotH := float64(chartW-chartPadL), float64(chartH-chartPadB-chartPadT)
	barW := plotW / float64(len(buckets))
	fmt.Fprintf(&s, `<svg id="%s" class="chart" role="img" viewBox="0 0 %d %d" width="%d" height="%d" xmlns="http://www.w3.org/2000/svg">`, id, chartW, chartH, chartW, chartH)
	fmt.Fprintf(&s, `<title>%s</title>`, template.HTMLEscapeString(title))
	base := float64(chartH - chartPadB)
	fmt.Fprintf(&s, `<line class="axis" x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#999"/>`, chartPadL, base, chartW, base)
	fmt.Fprintf(&s, `<text class="peak" x="%d" y="%d" font-size="11" text-anchor="end" fill="#555">%d</text>`, chartPadL-4, chartPadT+9, peak)
	fmt.Fprintf(&s, `<text x="%d" y="%.1f" font-size="11" text-anchor="end" fill="#555">0</text>`, chartPadL-4, base)
	for i, b := range buckets {
		x := float64(chartPadL) + float64(i)*barW
		hc := plotH * float64(b.Completed) / float64(peak)
		hf := plotH * float64(b.Failed) / float64(peak)
		label := b.Start.UTC().Format(chartLabelFormat)
		fmt.Fprintf(&s, `<g class="bar" data-start="%s" data-completed="%d" data-failed="%d"><title>%s–%s UTC: %d completed, %d failed</title>`,
			b.Start.UTC().Format(time.RFC3339), b.Completed, b.Failed, label, b.Start.Add(step).UTC().Format(chartLabelFormat), b.Completed, b.Failed)
		fmt.Fprintf(&s, `<rect class="completed" x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#27803a"/>`, x+0.5, base-hc, max(barW-1, 0.5), hc)
		fmt.Fprintf(&s, `<rect class="failed" x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#c0392b"/>`, x+0.5, base-hc-hf, max(barW-1, 0.5), hf)
		s.WriteString(`</g>`)
		if anchor, ok := map[int]string{0: "start", len(buckets) / 2: "middle", len(buckets) - 1: "end"}[i]; ok {
			fmt.Fprintf(&s, `<text x="%.1f" y="%d" font-size="11" text-anchor="%s" fill="#555">%s</text>`, x+barW/2, chartH-4, anchor, label)
		}
	}
	s.WriteString(`</svg>`)
	return template.HTML(s.String()) // numbers and formatted times only
}

// MinuteChart is the last hour, a bar a minute.
func (h *History) MinuteChart() template.HTML {
	return svgChart("chart-hour", "specs finished per minute, last hour", h.Minutes[:], time.Minute)
}

// DayChart is the last day, a bar an hour.
func (h *History) DayChart() template.HTML {
	return svgChart("chart-day", "specs finished per hour, last day", h.Hours[:], time.Hour)
}

// totals sums buckets: completed and failed.
func totals(bs []Bucket) (completed, failed int) {
	for _, b := range bs {
		completed += b.Completed
		failed += b.Failed
	}
	return completed, failed
}

// HourTotals are the last hour's completed and failed.
func (h *History) HourTotals() [2]int { c, f := totals(h.Minutes[:]); return [2]int{c, f} }

// DayTotals are the last day's completed and failed.
func (h *History) DayTotals() [2]int { c, f := totals(h.Hours[:]); return [2]int{c, f} }
