// Loaded after @babel/standalone in the main process's transpiler isolate
// (plugin_server/plugins/js/transpile.py). Turns a plugin's TypeScript, ES
// module or CommonJS source into one script body: modules become CommonJS,
// types are dropped, lines are kept where they were (so V8's stack lines are
// the plugin's own), every while / do-while / for(;;) loop checks the call's
// deadline on each turn, and the names the plugin requires are collected.
function transpilePlugin(source, filename, guardName) {
  const required = new Set();
  const guardLoops = ({ types: t }) => {
    const guard = (path) => {
      const loc = path.node.loc ? path.node.loc.start : { line: 0, column: 0 };
      const check = t.expressionStatement(
        t.callExpression(t.identifier(guardName), [t.numericLiteral(loc.line), t.numericLiteral(loc.column)]),
      );
      const body = path.get("body");
      if (body.isBlockStatement()) body.unshiftContainer("body", check);
      else body.replaceWith(t.blockStatement([check, body.node]));
    };
    return {
      visitor: {
        WhileStatement: guard,
        DoWhileStatement: guard,
        ForStatement: guard,
        ImportDeclaration(path) {
          required.add(path.node.source.value);
        },
        ExportNamedDeclaration(path) {
          if (path.node.source) required.add(path.node.source.value);
        },
        CallExpression(path) {
          const callee = path.node.callee;
          if (callee.type === "Identifier" && callee.name === "require") {
            const first = path.node.arguments[0];
            if (first && first.type === "StringLiteral") required.add(first.value);
          }
          if (callee.type === "Import") {
            const first = path.node.arguments[0];
            if (first && first.type === "StringLiteral") required.add(first.value);
          }
        },
      },
    };
  };
  const typescript = /\.tsx?$/.test(filename);
  const result = Babel.transform(source, {
    filename,
    sourceType: "unambiguous",
    retainLines: true,
    compact: false,
    comments: true,
    presets: typescript ? [["typescript", { allExtensions: true, onlyRemoveTypeImports: false }]] : [],
    plugins: [guardLoops, ["transform-modules-commonjs", { strictMode: false }]],
  });
  return JSON.stringify({ code: result.code, required: [...required] });
}
