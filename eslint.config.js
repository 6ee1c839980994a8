// SPDX-License-Identifier: AGPL-3.0-or-later
// Lint rules, including the layering of docs/ARCHITECTURE.md: each package may import only the
// packages below it, and only through their public entry.
import stylistic from '@stylistic/eslint-plugin';
import tseslint from 'typescript-eslint';

const layer = (files, forbidden, message) => ({
  files,
  rules: {
    'no-restricted-imports': [
      'error',
      {
        patterns: [
          { group: ['@murmure/*/src/*', '@murmure/*/dist/*'], message: 'import a package through its public entry only' },
          ...(forbidden.length > 0 ? [{ group: forbidden, message }] : []),
        ],
      },
    ],
  },
});

export default tseslint.config(
  { ignores: ['**/dist/**', '**/node_modules/**', 'data/**', 'bench/results/**'] },
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      eqeqeq: 'error',
      'no-console': 'error',
    },
  },
  // Layout, checked by the same run: the house style, which `eslint --fix` applies.
  {
    plugins: { '@stylistic': stylistic },
    rules: {
      '@stylistic/semi': ['error', 'always'],
      '@stylistic/quotes': ['error', 'single', { avoidEscape: true, allowTemplateLiterals: 'always' }],
      '@stylistic/comma-dangle': ['error', 'always-multiline'],
      '@stylistic/indent': ['error', 2, { SwitchCase: 1, flatTernaryExpressions: true, offsetTernaryExpressions: true, ignoredNodes: ['TSUnionType', 'TSIntersectionType'] }],
      '@stylistic/no-multiple-empty-lines': ['error', { max: 1, maxBOF: 0, maxEOF: 0 }],
      '@stylistic/no-trailing-spaces': 'error',
      '@stylistic/eol-last': 'error',
      '@stylistic/brace-style': ['error', '1tbs', { allowSingleLine: true }],
      '@stylistic/arrow-parens': ['error', 'always'],
      '@stylistic/arrow-spacing': 'error',
      '@stylistic/comma-spacing': 'error',
      '@stylistic/key-spacing': 'error',
      '@stylistic/keyword-spacing': 'error',
      '@stylistic/space-before-blocks': 'error',
      '@stylistic/space-infix-ops': 'error',
      '@stylistic/space-in-parens': 'error',
      '@stylistic/semi-spacing': 'error',
      '@stylistic/no-tabs': 'error',
      '@stylistic/member-delimiter-style': 'error',
      '@stylistic/type-annotation-spacing': 'error',
    },
  },
  layer(['packages/protocol/src/**'], ['@murmure/*', 'node:*', 'ws', '@signalapp/*'], 'protocol is pure: no I/O and no other package of ours'),
  layer(['packages/queue-crypto/src/**'], ['@murmure/relay', '@murmure/agent', '@murmure/cli', '@murmure/chat', '@murmure/crypto', '@signalapp/*', 'ws'], 'queue-crypto depends only on protocol and node:crypto'),
  layer(['packages/crypto/src/**'], ['@murmure/relay', '@murmure/agent', '@murmure/cli', '@murmure/chat', 'ws'], 'crypto depends only on protocol and libsignal'),
  layer(['packages/relay/src/**'], ['@murmure/agent', '@murmure/cli', '@murmure/chat', '@murmure/crypto', '@signalapp/libsignal-client'], 'the relay never imports client-side code'),
  layer(['packages/agent/src/**'], ['@murmure/relay', '@murmure/cli', '@murmure/chat'], 'the agent talks to relays over the wire only'),
  layer(['packages/chat/src/**'], ['@murmure/relay', '@murmure/cli', '@murmure/crypto', '@murmure/queue-crypto', '@signalapp/libsignal-client', 'ws'], 'chat uses the agent, never the layers below it'),
  layer(['packages/cli/src/**'], ['@murmure/agent', '@murmure/crypto', '@murmure/queue-crypto', '@signalapp/*', 'ws'], 'the CLI speaks to the chat API (and runs the relay)'),
  {
    files: ['packages/protocol/src/**/*.test.ts'],
    rules: { 'no-restricted-imports': 'off' },
  },
  {
    files: ['scripts/**', 'bench/**', 'packages/cli/bin/**'],
    rules: { 'no-console': 'off' },
  },
);
