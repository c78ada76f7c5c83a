// Lint for the hand-written TypeScript (generated files and compiled
// JavaScript are left out). Rules that need type information are not used:
// `tsc` already checks types, and they would triple the time this takes.
import js from '@eslint/js'
import tseslint from 'typescript-eslint'

export default tseslint.config(
  { ignores: ['**/*.js', '**/*.d.ts', 'lib/wire.ts', 'target/**', 'node_modules/**', 'npm/**', '.packed-install/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      // `_name` marks a parameter or binding kept on purpose.
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_' }],
      // `import x = require(...)` is how the CommonJS addon loader is typed.
      '@typescript-eslint/no-require-imports': ['error', { allowAsImport: true }],
    },
  },
)
