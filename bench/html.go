//go:build unix

package main

// -html: a self-contained report, tables and inline SVG charts, no
// external scripts or styles.

import (
	"fmt"
	"html"
	"math"
	"os"
	"strings"
)

func writeHTML(path string, r *suiteReport) error {
	var b strings.Builder
	esc := html.EscapeString
	b.WriteString(`<!DOCTYPE html><html><head><meta charset="utf-8"><title>plugloop bench</title><style>
body{font:14px/1.45 system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0;font-size:13px}td,th{padding:.25em .6em;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}.note{color:#555;font-size:12.5px}
.measures{background:#f8f8f8;border-left:3px solid #5b8def;padding:.5em .8em}svg{display:block;margin:1em 0}
.cond td{text-align:left}.warn{color:#a33}
</style></head><body>`)
	c := r.Conditions
	fmt.Fprintf(&b, "<h1>plugloop bench</h1><p>%s — %s, %d CPUs, %s</p>", esc(c.Date), esc(c.GoVersion), c.CPUs, esc(c.Kernel))
	b.WriteString("<p>Contents: ")
	for i, sc := range r.Scenarios {
		if i > 0 {
			b.WriteString(" · ")
		}
		fmt.Fprintf(&b, `<a href="#%s">%s</a>`, esc(sc.Name), esc(sc.Name))
	}
	b.WriteString("</p>")
	for _, sc := range r.Scenarios {
		fmt.Fprintf(&b, `<h2 id="%s">%s</h2><p class="measures">%s</p>`, esc(sc.Name), esc(sc.Name+": "+sc.Title), esc(sc.Measures))
		for _, ch := range sc.Charts {
			if len(ch.Series) > 0 {
				b.WriteString(lineSVG(ch))
			} else if len(ch.Bars) > 0 {
				b.WriteString(barSVG(ch))
			}
		}
		for _, t := range sc.Tables {
			if t.Title != "" {
				fmt.Fprintf(&b, "<h3>%s</h3>", esc(t.Title))
			}
			b.WriteString("<table><tr>")
			for _, h := range t.Header {
				fmt.Fprintf(&b, "<th>%s</th>", esc(h))
			}
			b.WriteString("</tr>")
			for _, row := range t.Rows {
				b.WriteString("<tr>")
				for i, cell := range row {
					span := ""
					if i == len(row)-1 && len(row) < len(t.Header) {
						span = fmt.Sprintf(` colspan="%d"`, len(t.Header)-i)
					}
					fmt.Fprintf(&b, "<td%s>%s</td>", span, esc(cell))
				}
				b.WriteString("</tr>")
			}
			b.WriteString("</table>")
			for _, n := range t.Notes {
				cls := "note"
				if strings.HasPrefix(n, "!") {
					cls = "note warn"
				}
				fmt.Fprintf(&b, `<p class="%s">%s</p>`, cls, esc(n))
			}
		}
		for _, n := range sc.Notes {
			fmt.Fprintf(&b, `<p class="note">%s</p>`, esc(n))
		}
	}
	b.WriteString(`<h2>Conditions</h2><table class="cond">`)
	for _, p := range c.pairs() {
		fmt.Fprintf(&b, "<tr><th>%s</th><td>%s</td></tr>", esc(p[0]), strings.ReplaceAll(esc(p[1]), "\n", "<br>"))
	}
	for _, s := range r.Skipped {
		fmt.Fprintf(&b, "<tr><th>skipped</th><td>%s: %s</td></tr>", esc(s.Server), esc(s.Reason))
	}
	for _, u := range r.Unreached {
		fmt.Fprintf(&b, `<tr><th>not reached</th><td class="warn">%s</td></tr>`, esc(u))
	}
	b.WriteString("</table>")
	if r.Interrupted {
		b.WriteString(`<p class="warn">Interrupted: results are partial.</p>`)
	}
	b.WriteString("</body></html>\n")
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// colorFor gives plugloop's servers blues and the others warm colours.
func colorFor(label string, i int) string {
	if strings.HasPrefix(label, plugloopPrefix) || label == "plugloop" {
		blues := []string{"#2f6fdf", "#4f8ff0", "#1d4fa8", "#6aa6f5", "#3a5fc0", "#84b8f7"}
		return blues[i%len(blues)]
	}
	warm := []string{"#e07b39", "#c9483b", "#8c6bb1", "#3c9d5d", "#b8860b", "#777"}
	return warm[i%len(warm)]
}

const (
	svgW    = 900
	labelW  = 150
	valueW  = 90
	barH    = 22
	barGap  = 6
	marginT = 28
)

func barSVG(ch chart) string {
	var b strings.Builder
	h := marginT + len(ch.Bars)*(barH+barGap) + 8
	maxV := 0.0
	for _, x := range ch.Bars {
		maxV = math.Max(maxV, x.Value)
	}
	if maxV <= 0 {
		maxV = 1
	}
	hint := "higher is better"
	if ch.LowerBetter {
		hint = "lower is better"
	}
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="system-ui,sans-serif" font-size="12">`, svgW, h)
	fmt.Fprintf(&b, `<text x="0" y="16" font-size="14" font-weight="600">%s</text><text x="%d" y="16" text-anchor="end" fill="#777">%s, %s</text>`,
		html.EscapeString(ch.Title), svgW, html.EscapeString(ch.Unit), hint)
	pl, other := 0, 0
	for i, x := range ch.Bars {
		y := marginT + i*(barH+barGap)
		w := (x.Value / maxV) * float64(svgW-labelW-valueW)
		var col string
		if strings.HasPrefix(x.Label, plugloopPrefix) || x.Label == "plugloop" {
			col = colorFor(x.Label, pl)
			pl++
		} else {
			col = colorFor(x.Label, other)
			other++
		}
		text := x.Text
		if text == "" {
			text = fmtValue(x.Value)
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text><rect x="%d" y="%d" width="%.1f" height="%d" fill="%s" rx="2"/><text x="%.1f" y="%d">%s</text>`,
			labelW-8, y+barH/2+4, html.EscapeString(x.Label), labelW, y, math.Max(w, 1), barH, col, float64(labelW)+w+6, y+barH/2+4, html.EscapeString(text))
	}
	b.WriteString("</svg>")
	return b.String()
}

func fmtValue(v float64) string {
	switch {
	case v >= 10000:
		return thousands(v)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func lineSVG(ch chart) string {
	const w, h, left, right, top, bottom = svgW, 320, 60, 170, 30, 36
	maxX, maxY := 0.0, 0.0
	for _, s := range ch.Series {
		for i := range s.X {
			maxX, maxY = math.Max(maxX, s.X[i]), math.Max(maxY, s.Y[i])
		}
	}
	if maxX <= 0 {
		maxX = 1
	}
	maxY = niceCeil(maxY)
	px := func(x float64) float64 { return left + x/maxX*float64(w-left-right) }
	py := func(y float64) float64 { return float64(h-bottom) - y/maxY*float64(h-top-bottom) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="system-ui,sans-serif" font-size="12">`, w, h)
	fmt.Fprintf(&b, `<text x="0" y="16" font-size="14" font-weight="600">%s</text>`, html.EscapeString(ch.Title))
	for i := 0; i <= 4; i++ {
		y := maxY * float64(i) / 4
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#e5e5e5"/><text x="%d" y="%.1f" text-anchor="end" fill="#555">%s</text>`,
			left, w-right, py(y), py(y), left-6, py(y)+4, fmtValue(y))
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#555">%s</text>`, 4, top-6, html.EscapeString(ch.Unit))
	for i := 0; i <= 5; i++ {
		x := maxX * float64(i) / 5
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%.1f %s</text>`, px(x), h-bottom+18, x, html.EscapeString(ch.XUnit))
	}
	pl, other := 0, 0
	for i, s := range ch.Series {
		var col string
		if strings.HasPrefix(s.Label, plugloopPrefix) {
			col = colorFor(s.Label, pl)
			pl++
		} else {
			col = colorFor(s.Label, other)
			other++
		}
		var pts []string
		for j := range s.X {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(s.X[j]), py(s.Y[j])))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`, col, strings.Join(pts, " "))
		ly := top + 10 + i*18
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="14" height="4" fill="%s"/><text x="%d" y="%d">%s</text>`, w-right+12, ly, col, w-right+32, ly+5, html.EscapeString(s.Label))
	}
	b.WriteString("</svg>")
	return b.String()
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}
