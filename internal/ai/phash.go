package ai

import (
	"fmt"
	"math"
	"slices"
)

// The perceptual hash (pHash, DCT variant): the luma is resampled to 32×32,
// turned as EXIF orientation says (so a photo and its rotated copy match),
// transformed with a 2-D DCT-II, and the 8×8 lowest frequencies are compared
// with their median (the DC term left out of the median, which it would
// dominate): bit i, most significant first in row-major order, is set when
// coefficient i is above it. Similar images differ in few bits (Hamming
// distance); unrelated ones in about 32.
const (
	hashGrid = 32
	hashLow  = 8
)

// dctTable holds cos((2x+1)uπ/2N)·α(u) for u < hashLow, x < hashGrid.
type dctTable [hashLow][hashGrid]float64

func newDCTTable() dctTable {
	var t dctTable
	for u := range hashLow {
		alpha := math.Sqrt(2.0 / hashGrid)
		if u == 0 {
			alpha = math.Sqrt(1.0 / hashGrid)
		}
		for x := range hashGrid {
			t[u][x] = alpha * math.Cos(float64(2*x+1)*float64(u)*math.Pi/(2*hashGrid))
		}
	}
	return t
}

// phash returns the 16-hex-digit hash of the luma plane as displayed.
func (t *dctTable) phash(luma plane, orientation int) string {
	g := orient(resample(luma, hashGrid, hashGrid), orientation)
	// Rows first: r[y][u] = Σx g[y][x]·c[u][x]; then columns: d[v][u] = Σy r[y][u]·c[v][y].
	var rows [hashGrid][hashLow]float64
	for y := range hashGrid {
		for u := range hashLow {
			var s float64
			for x := range hashGrid {
				s += g[y*hashGrid+x] * t[u][x]
			}
			rows[y][u] = s
		}
	}
	var coef [hashLow * hashLow]float64
	for v := range hashLow {
		for u := range hashLow {
			var s float64
			for y := range hashGrid {
				s += rows[y][u] * t[v][y]
			}
			coef[v*hashLow+u] = s
		}
	}
	sorted := slices.Clone(coef[1:])
	slices.Sort(sorted)
	median := (sorted[len(sorted)/2-1] + sorted[len(sorted)/2]) / 2
	var h uint64
	for i, c := range coef {
		if c > median {
			h |= 1 << (63 - i)
		}
	}
	return fmt.Sprintf("%016x", h)
}

// resample scales p to w×h by area averaging: each output pixel is the mean of
// the source area it covers, weighting partly covered source pixels by the
// covered fraction. It works for shrinking and enlarging alike.
func resample(p plane, w, h int) []float64 {
	xs := weights(p.w, w)
	ys := weights(p.h, h)
	tmp := make([]float64, p.h*w) // rows resampled
	for y := range p.h {
		row := p.pix[y*p.w : (y+1)*p.w]
		for x, ws := range xs {
			var s float64
			for _, wt := range ws {
				s += row[wt.i] * wt.w
			}
			tmp[y*w+x] = s
		}
	}
	out := make([]float64, w*h)
	for y, ws := range ys {
		for x := range w {
			var s float64
			for _, wt := range ws {
				s += tmp[wt.i*w+x] * wt.w
			}
			out[y*w+x] = s
		}
	}
	return out
}

type weight struct {
	i int
	w float64
}

// weights maps each of n output cells onto the m input cells it covers, with
// weights summing to 1.
func weights(m, n int) [][]weight {
	out := make([][]weight, n)
	scale := float64(m) / float64(n)
	for j := range n {
		lo, hi := float64(j)*scale, float64(j+1)*scale
		for i := int(lo); i < m && float64(i) < hi; i++ {
			cover := min(hi, float64(i+1)) - max(lo, float64(i))
			if cover > 0 {
				out[j] = append(out[j], weight{i, cover / scale})
			}
		}
	}
	return out
}

// orient returns the n×n grid g as displayed under EXIF orientation o: out(x,y)
// is the stored pixel that lands at (x,y) once the image is turned.
func orient(g []float64, o int) []float64 {
	if o <= 1 || o > 8 {
		return g
	}
	const n = hashGrid
	out := make([]float64, n*n)
	for y := range n {
		for x := range n {
			var sx, sy int
			switch o {
			case 2: // mirrored horizontally
				sx, sy = n-1-x, y
			case 3: // rotated 180°
				sx, sy = n-1-x, n-1-y
			case 4: // mirrored vertically
				sx, sy = x, n-1-y
			case 5: // transposed
				sx, sy = y, x
			case 6: // to be rotated 90° clockwise
				sx, sy = y, n-1-x
			case 7: // transversed
				sx, sy = n-1-y, n-1-x
			case 8: // to be rotated 90° counter-clockwise
				sx, sy = n-1-y, x
			}
			out[y*n+x] = g[sy*n+sx]
		}
	}
	return out
}
