package conformance

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The suite runs in other people's test binaries, where a FailNow on the
// loop goroutine (a require inside a callback or a posted function) does
// not stop the test: it ends the loop goroutine instead, and the test
// waits out its hang guards with the context wedged. No function literal
// that runs off the test goroutine may call require, Fatal, FailNow or
// Skip: those handed to do, Post, AfterFunc or Do, started with go, or
// given as a callback. (A syntactic check: a literal stored first and
// passed later escapes it.)
func TestNoFailNowOffTestGoroutine(t *testing.T) {
	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	fset := token.NewFileSet()
	var found []string
	for _, name := range files {
		f, err := parser.ParseFile(fset, name, nil, 0)
		require.NoError(t, err)
		ast.Inspect(f, func(n ast.Node) bool {
			for _, lit := range offTestGoroutine(n) {
				found = append(found, fatalCalls(fset, lit)...)
			}
			return true
		})
	}
	require.Empty(t, found, "calls that would FailNow off the test goroutine")
}

// offTestGoroutine returns the function literals n hands to another
// goroutine.
func offTestGoroutine(n ast.Node) []*ast.FuncLit {
	var lits []*ast.FuncLit
	add := func(e ast.Expr) {
		if l, ok := e.(*ast.FuncLit); ok {
			lits = append(lits, l)
		}
	}
	switch n := n.(type) {
	case *ast.CallExpr:
		if s, ok := n.Fun.(*ast.SelectorExpr); ok {
			switch s.Sel.Name {
			case "do", "Post", "AfterFunc", "Do":
				for _, a := range n.Args {
					add(a)
				}
			}
		}
	case *ast.GoStmt:
		add(n.Call.Fun)
	case *ast.KeyValueExpr:
		if k, ok := n.Key.(*ast.Ident); ok && (strings.HasSuffix(k.Name, "Callback") || k.Name == "Own" || k.Name == "Plugloop") {
			add(n.Value)
		}
	case *ast.FuncLit:
		// A callback made elsewhere: it takes a core.Event.
		if p := n.Type.Params.List; len(p) == 1 {
			if s, ok := p[0].Type.(*ast.SelectorExpr); ok && s.Sel.Name == "Event" {
				lits = append(lits, n)
			}
		}
	}
	return lits
}

// fatalCalls lists the calls in lit that may FailNow: require's, a
// testing.TB's Fatal, FailNow or Skip, or any call handed a t.
func fatalCalls(fset *token.FileSet, lit *ast.FuncLit) []string {
	var found []string
	ast.Inspect(lit.Body, func(n ast.Node) bool {
		c, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		bad := false
		if s, ok := c.Fun.(*ast.SelectorExpr); ok {
			x, _ := s.X.(*ast.Ident)
			bad = x != nil && x.Name == "require" || strings.HasPrefix(s.Sel.Name, "Fatal") ||
				s.Sel.Name == "FailNow" || strings.HasPrefix(s.Sel.Name, "Skip")
		}
		for _, a := range c.Args {
			if id, ok := a.(*ast.Ident); ok && id.Name == "t" {
				bad = true
			}
		}
		if bad {
			found = append(found, fset.Position(c.Pos()).String())
		}
		return true
	})
	return found
}
