module example.com/selectbackend

go 1.26

require (
	github.com/plugloop/plugloop v0.0.0
	golang.org/x/sys v0.38.0
)

require (
	github.com/davecgh/go-spew v1.1.2-0.20180830191138-d8f796af33cc // indirect
	github.com/pmezard/go-difflib v1.0.0 // indirect
	github.com/stretchr/testify v1.11.1 // indirect
	gopkg.in/yaml.v3 v3.0.1 // indirect
)

replace github.com/plugloop/plugloop => ../..
